import warnings, matplotlib
matplotlib.use('Agg')
warnings.filterwarnings('ignore', category=FutureWarning)
