// A kernel's dynamic shared memory, shared by both kernel families.
#pragma once

// The block's dynamic shared memory as `name` (unsigned char *), 16-byte
// aligned; under the CPU emulation (kernels/mamba2/ssd_emu.cuh, which defines
// SSM_EMULATE), the block's emulated shared memory.
#ifndef SSM_EMULATE
#define SSM_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#else
#define SSM_DYNAMIC_SMEM(name) unsigned char* name = emu::shared_memory()
#endif
