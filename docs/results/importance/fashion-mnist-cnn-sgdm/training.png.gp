set terminal pngcairo noenhanced size 1400,1000 font 'sans,11'
set output '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.tmp'
set multiplot layout 2,2 title 'fashion-mnist / cnn (batch 128, mean of 1 seed(s))'
set grid
set key bottom right
set xlabel 'epoch'
set ylabel 'test accuracy (%)'
unset logscale y
plot '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 0 using 1:2 with linespoints title 'sgdm', '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 1 using 1:2 with linespoints title 'sgdm+loss', '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 2 using 1:2 with linespoints title 'sgdm+upper-bound', '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 3 using 1:2 with linespoints title 'sgdm+exact'
set xlabel 'epoch'
set ylabel 'train loss'
set logscale y
plot '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 0 using 1:4 with linespoints title 'sgdm', '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 1 using 1:4 with linespoints title 'sgdm+loss', '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 2 using 1:4 with linespoints title 'sgdm+upper-bound', '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 3 using 1:4 with linespoints title 'sgdm+exact'
set xlabel 'training seconds'
set ylabel 'test accuracy (%)'
unset logscale y
plot '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 0 using 6:2 with linespoints title 'sgdm', '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 1 using 6:2 with linespoints title 'sgdm+loss', '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 2 using 6:2 with linespoints title 'sgdm+upper-bound', '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 3 using 6:2 with linespoints title 'sgdm+exact'
set xlabel 'training seconds'
set ylabel 'train loss'
set logscale y
plot '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 0 using 6:4 with linespoints title 'sgdm', '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 1 using 6:4 with linespoints title 'sgdm+loss', '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 2 using 6:4 with linespoints title 'sgdm+upper-bound', '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm/training.png.dat' index 3 using 6:4 with linespoints title 'sgdm+exact'
unset multiplot
set output
