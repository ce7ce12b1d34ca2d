mpi = False
compiler = 'gcc'
libraries = ['xc', 'openblas', 'fftw3']
fftw = True
scalapack = False
