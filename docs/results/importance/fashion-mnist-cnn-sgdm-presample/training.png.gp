set terminal pngcairo noenhanced size 1400,1000 font 'sans,11'
set output '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm-presample/training.png.tmp'
set multiplot layout 2,2 title 'fashion-mnist / cnn (batch 128, mean of 1 seed(s))'
set grid
set key bottom right
set xlabel 'epoch'
set ylabel 'test accuracy (%)'
unset logscale y
plot '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm-presample/training.png.dat' index 0 using 1:2 with linespoints title 'sgdm+upper-bound'
set xlabel 'epoch'
set ylabel 'train loss'
set logscale y
plot '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm-presample/training.png.dat' index 0 using 1:4 with linespoints title 'sgdm+upper-bound'
set xlabel 'training seconds'
set ylabel 'test accuracy (%)'
unset logscale y
plot '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm-presample/training.png.dat' index 0 using 6:2 with linespoints title 'sgdm+upper-bound'
set xlabel 'training seconds'
set ylabel 'train loss'
set logscale y
plot '/work/main/docs/results/importance/fashion-mnist-cnn-sgdm-presample/training.png.dat' index 0 using 6:4 with linespoints title 'sgdm+upper-bound'
unset multiplot
set output
