set terminal pngcairo noenhanced size 1400,1400 font 'sans,11'
set output '/work/main/docs/results/importance/mnist-mlp-adam/training.png.tmp'
set multiplot layout 3,2 title 'mnist / mlp (batch 128, mean of 3 seed(s))'
set grid
set key bottom right
set xlabel 'epoch'
set ylabel 'test accuracy (%)'
unset logscale y
plot '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 0 using 1:2 with linespoints title 'adam', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 1 using 1:2 with linespoints title 'adam+loss', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 2 using 1:2 with linespoints title 'adam+upper-bound', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 3 using 1:2 with linespoints title 'adam+exact'
set xlabel 'epoch'
set ylabel 'train loss'
set logscale y
plot '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 0 using 1:4 with linespoints title 'adam', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 1 using 1:4 with linespoints title 'adam+loss', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 2 using 1:4 with linespoints title 'adam+upper-bound', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 3 using 1:4 with linespoints title 'adam+exact'
set xlabel 'training seconds'
set ylabel 'test accuracy (%)'
unset logscale y
plot '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 0 using 6:2 with linespoints title 'adam', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 1 using 6:2 with linespoints title 'adam+loss', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 2 using 6:2 with linespoints title 'adam+upper-bound', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 3 using 6:2 with linespoints title 'adam+exact'
set xlabel 'training seconds'
set ylabel 'train loss'
set logscale y
plot '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 0 using 6:4 with linespoints title 'adam', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 1 using 6:4 with linespoints title 'adam+loss', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 2 using 6:4 with linespoints title 'adam+upper-bound', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 3 using 6:4 with linespoints title 'adam+exact'
set xlabel 'epoch'
set ylabel 'head-class test accuracy (%)'
unset logscale y
plot '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 0 using 1:7 with linespoints title 'adam', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 1 using 1:7 with linespoints title 'adam+loss', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 2 using 1:7 with linespoints title 'adam+upper-bound', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 3 using 1:7 with linespoints title 'adam+exact'
set xlabel 'epoch'
set ylabel 'tail-class test accuracy (%)'
unset logscale y
plot '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 0 using 1:8 with linespoints title 'adam', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 1 using 1:8 with linespoints title 'adam+loss', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 2 using 1:8 with linespoints title 'adam+upper-bound', '/work/main/docs/results/importance/mnist-mlp-adam/training.png.dat' index 3 using 1:8 with linespoints title 'adam+exact'
unset multiplot
set output
