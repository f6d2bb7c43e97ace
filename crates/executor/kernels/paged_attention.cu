// tandem's paged-attention kernels (issue 19): attention reading K/V through the block table,
// the KV write of a step's new rows into their slots, and the block copy behind swap.
//
// Built to PTX by crates/executor/build.rs (the `cuda` feature, nvcc) and loaded by
// src/tensor/paged/cuda.rs. Every index computed here is mirrored, loop for loop, by the CPU
// reference in src/tensor/paged/reference.rs, which the tests check against plain attention;
// the constants below must equal src/tensor/paged/plan.rs's (a test reads this file).
//
// Layouts (all row-major, contiguous):
//   q, out        [rows][heads][HEAD_DIM]                bf16  (the step's packed rows)
//   k/v cache     [num_blocks * block_size][kv_heads][HEAD_DIM]   bf16  (one layer's; slot-major)
//   block_tables  [seqs][max_blocks]                     u32   (padded with 0 past a table's end)
//   ctx_lens      [seqs]                                 u32   (context after this step)
//   decode_rows   [n][2]  = (row, seq)                   u32   (sequences fed one token)
//   tiles         [n][4]  = (seq, first_row, first_pos, len)   u32  (len <= Q_TILE query rows)
//   slot of a position: table[pos / block_size] * block_size + pos % block_size
//   KV head of query head h: h / (heads / kv_heads)
//
// Prior art: vLLM's paged_attention_v1/v2 (decode: one block per head, sequence and
// partition, split-K over PARTITION_SIZE tokens, then a reduce) and FlashAttention's online
// softmax (prefill: a tile of a chunk's queries against key tiles staged in shared memory,
// causal inside the chunk). bf16 in, f32 accumulation. CUDA cores only: tensor-core MMA is
// left for when a GPU can measure it.

#include <cuda_bf16.h>
#include <stdint.h>

#define WARP_SIZE 32
#define NUM_THREADS 128
#define NUM_WARPS (NUM_THREADS / WARP_SIZE)
#define PARTITION_SIZE 512
#define Q_TILE 16
#define K_TILE 32

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The slot holding position `pos` of the sequence whose block table is `table`.
__device__ __forceinline__ int64_t slot_of(const uint32_t* table, uint32_t pos, uint32_t block_size) {
  return (int64_t)table[pos / block_size] * block_size + pos % block_size;
}

// Reduces `v` over the block's threads (every thread gets the result). `red` has NUM_WARPS floats.
__device__ __forceinline__ float block_reduce(float v, float* red, bool is_max) {
  const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
  v = is_max ? warp_max(v) : warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = red[0];
#pragma unroll
  for (int w = 1; w < NUM_WARPS; w++) r = is_max ? fmaxf(r, red[w]) : r + red[w];
  __syncthreads();
  return r;
}

// Decode: one block per (decode row, query head, partition of PARTITION_SIZE context tokens) —
// rows on grid x, whose limit is 2^31 - 1 (y and z stop at 65,535).
// Scores one key per warp (lanes split the head dimension), softmax over the partition, then
// the weighted sum of V with threads over channels. With one partition the normalized result
// goes straight to `out`; with more, each partition's (max, sum, normalized partial) goes to
// the temporaries for paged_decode_reduce.
template <int HEAD_DIM>
__device__ void paged_decode(bf16* __restrict__ out, float* __restrict__ tmp_out, float* __restrict__ max_logits,
                             float* __restrict__ exp_sums, const bf16* __restrict__ q,
                             const bf16* __restrict__ k_cache, const bf16* __restrict__ v_cache,
                             const uint32_t* __restrict__ block_tables, const uint32_t* __restrict__ ctx_lens,
                             const uint32_t* __restrict__ decode_rows, uint32_t max_blocks, uint32_t heads,
                             uint32_t kv_heads, uint32_t block_size, uint32_t max_parts, float scale) {
  static_assert(HEAD_DIM % WARP_SIZE == 0 && HEAD_DIM <= NUM_THREADS, "head_dim: a multiple of 32, at most 128");
  constexpr int PER_LANE = HEAD_DIM / WARP_SIZE;
  constexpr int GROUPS = NUM_THREADS / HEAD_DIM;
  const uint32_t i = blockIdx.x, h = blockIdx.y, part = blockIdx.z;
  const uint32_t row = decode_rows[2 * i], seq = decode_rows[2 * i + 1];
  const uint32_t ctx = ctx_lens[seq];
  const uint32_t start = part * PARTITION_SIZE;
  if (start >= ctx) return;
  const uint32_t n = min(start + PARTITION_SIZE, ctx) - start;
  const uint32_t kvh = h / (heads / kv_heads);
  const int64_t kv_dim = (int64_t)kv_heads * HEAD_DIM;
  const uint32_t* table = block_tables + (int64_t)seq * max_blocks;
  const int tid = threadIdx.x, warp = tid / WARP_SIZE, lane = tid % WARP_SIZE;

  __shared__ float logits[PARTITION_SIZE];
  __shared__ float red[NUM_WARPS];
  __shared__ float partial[NUM_THREADS];

  const bf16* qp = q + ((int64_t)row * heads + h) * HEAD_DIM;
  float qr[PER_LANE];
#pragma unroll
  for (int j = 0; j < PER_LANE; j++) qr[j] = __bfloat162float(qp[lane + WARP_SIZE * j]);

  float local_max = -INFINITY;
  for (uint32_t t = warp; t < n; t += NUM_WARPS) {
    const bf16* kp = k_cache + slot_of(table, start + t, block_size) * kv_dim + (int64_t)kvh * HEAD_DIM;
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) s += qr[j] * __bfloat162float(kp[lane + WARP_SIZE * j]);
    s = warp_sum(s) * scale;
    if (lane == 0) logits[t] = s;
    local_max = fmaxf(local_max, s);
  }
  __syncthreads();
  const float m = block_reduce(local_max, red, true);
  float local_sum = 0.f;
  for (uint32_t t = tid; t < n; t += NUM_THREADS) {
    const float e = __expf(logits[t] - m);
    logits[t] = e;
    local_sum += e;
  }
  const float sum = block_reduce(local_sum, red, false);  // its first barrier publishes logits

  const int c = tid % HEAD_DIM, g = tid / HEAD_DIM;
  float acc = 0.f;
  if (g < GROUPS) {
    for (uint32_t t = g; t < n; t += GROUPS) {
      const bf16* vp = v_cache + slot_of(table, start + t, block_size) * kv_dim + (int64_t)kvh * HEAD_DIM;
      acc += logits[t] * __bfloat162float(vp[c]);
    }
  }
  partial[tid] = acc;
  __syncthreads();
  if (tid < HEAD_DIM) {
    float a = 0.f;
#pragma unroll
    for (int gg = 0; gg < GROUPS; gg++) a += partial[gg * HEAD_DIM + tid];
    a /= sum;
    if (max_parts == 1) {
      out[((int64_t)row * heads + h) * HEAD_DIM + tid] = __float2bfloat16(a);
    } else {
      tmp_out[(((int64_t)i * heads + h) * max_parts + part) * HEAD_DIM + tid] = a;
    }
  }
  if (tid == 0 && max_parts > 1) {
    const int64_t at = ((int64_t)i * heads + h) * max_parts + part;
    max_logits[at] = m;
    exp_sums[at] = sum;
  }
}

// Combines a decode row's partitions: weight of partition p = exp_sum_p * exp(max_p - max),
// out = sum_p weight_p * partial_p / sum_p weight_p. One block per (decode row, head).
template <int HEAD_DIM>
__device__ void paged_decode_reduce(bf16* __restrict__ out, const float* __restrict__ tmp_out,
                                    const float* __restrict__ max_logits, const float* __restrict__ exp_sums,
                                    const uint32_t* __restrict__ ctx_lens, const uint32_t* __restrict__ decode_rows,
                                    uint32_t heads, uint32_t max_parts) {
  const uint32_t i = blockIdx.x, h = blockIdx.y;
  const uint32_t row = decode_rows[2 * i], seq = decode_rows[2 * i + 1];
  const uint32_t parts = (ctx_lens[seq] + PARTITION_SIZE - 1) / PARTITION_SIZE;
  const int64_t base = ((int64_t)i * heads + h) * max_parts;
  float m = -INFINITY;
  for (uint32_t p = 0; p < parts; p++) m = fmaxf(m, max_logits[base + p]);
  float total = 0.f;
  for (uint32_t p = 0; p < parts; p++) total += exp_sums[base + p] * __expf(max_logits[base + p] - m);
  for (int c = threadIdx.x; c < HEAD_DIM; c += blockDim.x) {
    float a = 0.f;
    for (uint32_t p = 0; p < parts; p++) {
      a += tmp_out[(base + p) * HEAD_DIM + c] * (exp_sums[base + p] * __expf(max_logits[base + p] - m));
    }
    out[((int64_t)row * heads + h) * HEAD_DIM + c] = __float2bfloat16(a / total);
  }
}

// Prefill chunks: one block per (tile of up to Q_TILE consecutive query rows of one sequence,
// query head). Query r of the tile, at position first_pos + r, sees positions 0 ..= first_pos
// + r (its cached context and the chunk's earlier tokens). Key tiles of K_TILE positions are
// staged in shared memory; each warp owns Q_TILE / NUM_WARPS queries, lane j scores key j of
// the tile, and an online softmax (running max and sum per query) folds the tile into the
// lane's HEAD_DIM / 32 output channels.
template <int HEAD_DIM>
__device__ void paged_prefill(bf16* __restrict__ out, const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                              const bf16* __restrict__ v_cache, const uint32_t* __restrict__ block_tables,
                              const uint32_t* __restrict__ tiles, uint32_t max_blocks, uint32_t heads,
                              uint32_t kv_heads, uint32_t block_size, float scale) {
  static_assert(HEAD_DIM % WARP_SIZE == 0 && HEAD_DIM <= NUM_THREADS, "head_dim: a multiple of 32, at most 128");
  static_assert(K_TILE == WARP_SIZE, "one key of a tile per lane");
  constexpr int PER_LANE = HEAD_DIM / WARP_SIZE;
  constexpr int Q_PER_WARP = Q_TILE / NUM_WARPS;
  const uint32_t tile = blockIdx.x, h = blockIdx.y;
  const uint32_t seq = tiles[4 * tile], first_row = tiles[4 * tile + 1];
  const uint32_t first_pos = tiles[4 * tile + 2], len = tiles[4 * tile + 3];
  const uint32_t kvh = h / (heads / kv_heads);
  const int64_t kv_dim = (int64_t)kv_heads * HEAD_DIM;
  const uint32_t* table = block_tables + (int64_t)seq * max_blocks;
  const uint32_t kv_len = first_pos + len;  // keys the tile's last query sees
  const int tid = threadIdx.x, warp = tid / WARP_SIZE, lane = tid % WARP_SIZE;

  __shared__ float q_s[Q_TILE][HEAD_DIM];
  __shared__ float k_s[K_TILE][HEAD_DIM + 1];  // +1: lanes reading different keys hit different banks
  __shared__ float v_s[K_TILE][HEAD_DIM];

  for (int idx = tid; idx < Q_TILE * HEAD_DIM; idx += NUM_THREADS) {
    const int r = idx / HEAD_DIM, c = idx % HEAD_DIM;
    q_s[r][c] = r < (int)len ? __bfloat162float(q[((int64_t)(first_row + r) * heads + h) * HEAD_DIM + c]) : 0.f;
  }
  float m[Q_PER_WARP], l[Q_PER_WARP], acc[Q_PER_WARP][PER_LANE];
#pragma unroll
  for (int r = 0; r < Q_PER_WARP; r++) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) acc[r][j] = 0.f;
  }

  for (uint32_t kt = 0; kt < kv_len; kt += K_TILE) {
    __syncthreads();  // the previous tile's readers are done (and q_s is written, first time)
    for (int idx = tid; idx < K_TILE * HEAD_DIM; idx += NUM_THREADS) {
      const int t = idx / HEAD_DIM, c = idx % HEAD_DIM;
      const uint32_t pos = kt + t;
      float kv = 0.f, vv = 0.f;
      if (pos < kv_len) {
        const int64_t at = slot_of(table, pos, block_size) * kv_dim + (int64_t)kvh * HEAD_DIM + c;
        kv = __bfloat162float(k_cache[at]);
        vv = __bfloat162float(v_cache[at]);
      }
      k_s[t][c] = kv;
      v_s[t][c] = vv;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < Q_PER_WARP; r++) {
      const uint32_t qi = warp * Q_PER_WARP + r;
      if (qi >= len) break;  // uniform across the warp
      const uint32_t qpos = first_pos + qi;
      const uint32_t key = kt + lane;
      float s = 0.f;
#pragma unroll 8
      for (int c = 0; c < HEAD_DIM; c++) s += q_s[qi][c] * k_s[lane][c];
      const bool seen = key <= qpos;
      s = seen ? s * scale : -INFINITY;
      const float new_m = fmaxf(m[r], warp_max(s));
      if (new_m == -INFINITY) continue;  // nothing seen yet (cannot happen: key 0 is in tile 0)
      const float p = seen ? __expf(s - new_m) : 0.f;
      const float corr = __expf(m[r] - new_m);
      l[r] = l[r] * corr + warp_sum(p);
#pragma unroll
      for (int j = 0; j < PER_LANE; j++) acc[r][j] *= corr;
      for (int t = 0; t < K_TILE; t++) {
        const float pt = __shfl_sync(0xffffffffu, p, t);
#pragma unroll
        for (int j = 0; j < PER_LANE; j++) acc[r][j] += pt * v_s[t][lane + WARP_SIZE * j];
      }
      m[r] = new_m;
    }
  }
#pragma unroll
  for (int r = 0; r < Q_PER_WARP; r++) {
    const uint32_t qi = warp * Q_PER_WARP + r;
    if (qi >= len) break;
    bf16* op = out + ((int64_t)(first_row + qi) * heads + h) * HEAD_DIM;
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) op[lane + WARP_SIZE * j] = __float2bfloat16(acc[r][j] / l[r]);
  }
}

#define INSTANTIATE(HD)                                                                                       \
  extern "C" __global__ void __launch_bounds__(NUM_THREADS) paged_decode_bf16_hd##HD(                      \
      bf16* out, float* tmp_out, float* max_logits, float* exp_sums, const bf16* q, const bf16* k_cache,    \
      const bf16* v_cache, const uint32_t* block_tables, const uint32_t* ctx_lens,                          \
      const uint32_t* decode_rows, uint32_t max_blocks, uint32_t heads, uint32_t kv_heads,                  \
      uint32_t block_size, uint32_t max_parts, float scale) {                                               \
    paged_decode<HD>(out, tmp_out, max_logits, exp_sums, q, k_cache, v_cache, block_tables, ctx_lens,        \
                     decode_rows, max_blocks, heads, kv_heads, block_size, max_parts, scale);               \
  }                                                                                                          \
  extern "C" __global__ void paged_decode_reduce_bf16_hd##HD(                                               \
      bf16* out, const float* tmp_out, const float* max_logits, const float* exp_sums,                      \
      const uint32_t* ctx_lens, const uint32_t* decode_rows, uint32_t heads, uint32_t max_parts) {          \
    paged_decode_reduce<HD>(out, tmp_out, max_logits, exp_sums, ctx_lens, decode_rows, heads, max_parts);   \
  }                                                                                                          \
  extern "C" __global__ void __launch_bounds__(NUM_THREADS) paged_prefill_bf16_hd##HD(                     \
      bf16* out, const bf16* q, const bf16* k_cache, const bf16* v_cache, const uint32_t* block_tables,     \
      const uint32_t* tiles, uint32_t max_blocks, uint32_t heads, uint32_t kv_heads, uint32_t block_size,   \
      float scale) {                                                                                        \
    paged_prefill<HD>(out, q, k_cache, v_cache, block_tables, tiles, max_blocks, heads, kv_heads,           \
                      block_size, scale);                                                                   \
  }

INSTANTIATE(32)
INSTANTIATE(64)
INSTANTIATE(96)
INSTANTIATE(128)

// The KV write: row r of `src` ([rows][kv_dim]) into slot slots[r] of `cache`
// ([slots][kv_dim]). One block per row.
extern "C" __global__ void write_kv_slots_bf16(bf16* __restrict__ cache, const bf16* __restrict__ src,
                                               const uint32_t* __restrict__ slots, uint32_t kv_dim) {
  const uint32_t r = blockIdx.x;
  const int64_t dst = (int64_t)slots[r] * kv_dim, from = (int64_t)r * kv_dim;
  for (uint32_t c = threadIdx.x; c < kv_dim; c += blockDim.x) cache[dst + c] = src[from + c];
}

// Block copy (swap staging, copy-on-write): block pairs[2i] of `src` to block pairs[2i+1] of
// `dst`, a block being `block_elems` (block_size * kv_dim) contiguous elements. One block of
// threads per pair.
extern "C" __global__ void copy_blocks_bf16(bf16* __restrict__ dst, const bf16* __restrict__ src,
                                            const uint32_t* __restrict__ pairs, uint32_t block_elems) {
  const uint32_t i = blockIdx.x;
  const int64_t from = (int64_t)pairs[2 * i] * block_elems, to = (int64_t)pairs[2 * i + 1] * block_elems;
  for (uint32_t e = threadIdx.x; e < block_elems; e += blockDim.x) dst[to + e] = src[from + e];
}
