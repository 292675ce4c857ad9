set terminal pngcairo noenhanced size 900,600
set output '/work/main/docs/results/vr/a9a-l1_1e-4-l2_1e-6/gap.png'
set logscale y
set format y '1e%T'
set xlabel 'passes over the data'
set ylabel '(P - P*) / |P*|'
set grid
set datafile separator ','
set title 'a9a: logistic, l1 0.0001, l2 1e-06, batch 181'
plot '/work/main/docs/results/vr/a9a-l1_1e-4-l2_1e-6/gap.csv' using (strcol(1) eq 'sgd' ? $3 : 1/0):5 with lines lw 2 title 'sgd (step 2)', '/work/main/docs/results/vr/a9a-l1_1e-4-l2_1e-6/gap.csv' using (strcol(1) eq 'svrg' ? $3 : 1/0):5 with lines lw 2 title 'svrg (step 16)', '/work/main/docs/results/vr/a9a-l1_1e-4-l2_1e-6/gap.csv' using (strcol(1) eq 'katyusha' ? $3 : 1/0):5 with lines lw 2 title 'katyusha (step 21.3)', '/work/main/docs/results/vr/a9a-l1_1e-4-l2_1e-6/gap.csv' using (strcol(1) eq 'dasvrda' ? $3 : 1/0):5 with lines lw 2 title 'dasvrda (step 7.02)'
