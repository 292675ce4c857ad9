set terminal pngcairo noenhanced size 900,600
set output '/work/main/docs/results/vr/heart-scale-l1_1e-4-l2_0/gap.png'
set logscale y
set format y '1e%T'
set xlabel 'passes over the data'
set ylabel '(P - P*) / |P*|'
set grid
set datafile separator ','
set title 'heart-scale: logistic, l1 0.0001, l2 0, batch 17'
plot '/work/main/docs/results/vr/heart-scale-l1_1e-4-l2_0/gap.csv' using (strcol(1) eq 'sgd' ? $3 : 1/0):5 with lines lw 2 title 'sgd (step 0.25)', '/work/main/docs/results/vr/heart-scale-l1_1e-4-l2_0/gap.csv' using (strcol(1) eq 'svrg' ? $3 : 1/0):5 with lines lw 2 title 'svrg (step 16)', '/work/main/docs/results/vr/heart-scale-l1_1e-4-l2_0/gap.csv' using (strcol(1) eq 'katyusha' ? $3 : 1/0):5 with lines lw 2 title 'katyusha (step 2.67)', '/work/main/docs/results/vr/heart-scale-l1_1e-4-l2_0/gap.csv' using (strcol(1) eq 'dasvrda' ? $3 : 1/0):5 with lines lw 2 title 'dasvrda (step 14)'
