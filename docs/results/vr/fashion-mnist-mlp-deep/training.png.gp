set terminal pngcairo noenhanced size 1400,1000 font 'sans,11'
set output 'docs/results/vr/fashion-mnist-mlp-deep/training.png.tmp'
set multiplot layout 2,2 title 'fashion-mnist / mlp (batch 128, mean of 3 seed(s))'
set grid
set key bottom right
set xlabel 'epoch'
set ylabel 'test accuracy (%)'
unset logscale y
plot 'docs/results/vr/fashion-mnist-mlp-deep/training.png.dat' index 0 using 1:2 with linespoints title 'sgd', 'docs/results/vr/fashion-mnist-mlp-deep/training.png.dat' index 1 using 1:2 with linespoints title 'sgdm', 'docs/results/vr/fashion-mnist-mlp-deep/training.png.dat' index 2 using 1:2 with linespoints title 'svrg'
set xlabel 'epoch'
set ylabel 'train loss'
set logscale y
plot 'docs/results/vr/fashion-mnist-mlp-deep/training.png.dat' index 0 using 1:4 with linespoints title 'sgd', 'docs/results/vr/fashion-mnist-mlp-deep/training.png.dat' index 1 using 1:4 with linespoints title 'sgdm', 'docs/results/vr/fashion-mnist-mlp-deep/training.png.dat' index 2 using 1:4 with linespoints title 'svrg'
set xlabel 'training seconds'
set ylabel 'test accuracy (%)'
unset logscale y
plot 'docs/results/vr/fashion-mnist-mlp-deep/training.png.dat' index 0 using 6:2 with linespoints title 'sgd', 'docs/results/vr/fashion-mnist-mlp-deep/training.png.dat' index 1 using 6:2 with linespoints title 'sgdm', 'docs/results/vr/fashion-mnist-mlp-deep/training.png.dat' index 2 using 6:2 with linespoints title 'svrg'
set xlabel 'training seconds'
set ylabel 'train loss'
set logscale y
plot 'docs/results/vr/fashion-mnist-mlp-deep/training.png.dat' index 0 using 6:4 with linespoints title 'sgd', 'docs/results/vr/fashion-mnist-mlp-deep/training.png.dat' index 1 using 6:4 with linespoints title 'sgdm', 'docs/results/vr/fashion-mnist-mlp-deep/training.png.dat' index 2 using 6:4 with linespoints title 'svrg'
unset multiplot
set output
