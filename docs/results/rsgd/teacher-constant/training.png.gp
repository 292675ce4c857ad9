set terminal pngcairo size 1400,1000 font 'sans,11'
set output '/work/main/docs/results/rsgd/teacher-constant/training.png.tmp'
set multiplot layout 2,2 title 'teacher / mlp (batch 128, mean of 3 seed(s))'
set grid
set key bottom right
set xlabel 'epoch'
set ylabel 'test accuracy (%)'
unset logscale y
plot '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 0 using 1:2 with linespoints title 'sgd', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 1 using 1:2 with linespoints title 'sgdm', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 2 using 1:2 with linespoints title 'nesterov', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 3 using 1:2 with linespoints title 'adam', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 4 using 1:2 with linespoints title 'rsgd'
set xlabel 'epoch'
set ylabel 'train loss'
set logscale y
plot '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 0 using 1:4 with linespoints title 'sgd', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 1 using 1:4 with linespoints title 'sgdm', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 2 using 1:4 with linespoints title 'nesterov', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 3 using 1:4 with linespoints title 'adam', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 4 using 1:4 with linespoints title 'rsgd'
set xlabel 'training seconds'
set ylabel 'test accuracy (%)'
unset logscale y
plot '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 0 using 6:2 with linespoints title 'sgd', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 1 using 6:2 with linespoints title 'sgdm', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 2 using 6:2 with linespoints title 'nesterov', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 3 using 6:2 with linespoints title 'adam', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 4 using 6:2 with linespoints title 'rsgd'
set xlabel 'training seconds'
set ylabel 'train loss'
set logscale y
plot '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 0 using 6:4 with linespoints title 'sgd', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 1 using 6:4 with linespoints title 'sgdm', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 2 using 6:4 with linespoints title 'nesterov', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 3 using 6:4 with linespoints title 'adam', '/work/main/docs/results/rsgd/teacher-constant/training.png.dat' index 4 using 6:4 with linespoints title 'rsgd'
unset multiplot
set output
