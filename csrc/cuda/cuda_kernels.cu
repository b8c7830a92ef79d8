// placeholder: replaced by the CUDA kernels
#include "cuda_kernels.h"
