// CUDA fused optimizer steps, the CUDA twin of kernels/cpu/optim.h (CPU): the same slices and hyperparameters
// (kernels::cpu::AdamSlice / SgdSlice / AdamArgs / SgdArgs, whose pointers here point into device memory), all
// parameters in one launch. Each step is two kernels on `stream`: a check of every gradient * inv_scale for inf/nan
// that sets a flag, then the update, which writes nothing when the flag is set. So where the CPU returns false, the
// CUDA step writes *nonfinite = 1 (0 when it stepped) into caller-provided device memory, which the caller copies
// back after synchronizing (under the emulator: reads directly).
// The launcher cuts the parameters into fixed chunks (one block each), builds a table of chunks and per-parameter
// constants on the host and copies it into `workspace` (device memory of optim_workspace_bytes bytes), with
// cudaMemcpyAsync from pageable memory, so the host table may go away when the call returns.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/stream.h"
#include "kernels/optim.h"

namespace unet::kernels::cuda {

// Device scratch for one step over parameters of these sizes (count entries).
size_t optim_workspace_bytes(const int64_t* sizes, size_t count);

void adam_step(const AdamSlice* slices, size_t count, const AdamArgs& args, void* workspace,
               int* nonfinite, cudaStream_t stream);
void sgd_step(const SgdSlice* slices, size_t count, const SgdArgs& args, void* workspace, int* nonfinite,
              cudaStream_t stream);

// The table of these entry points that the engine dispatches through (kernels/optim.h).
extern const OptimKernels optim_kernels;

}  // namespace unet::kernels::cuda
