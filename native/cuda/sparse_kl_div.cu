// sparseKlDiv on CUDA: KD against a sparse teacher (k ids per row with teacher
// log-probs, or sampled ids with importance weights) with the student's full-vocabulary
// softmax. Losses and gradients of the four tail modes: common/sparse_kl_div.h (the
// CPU kernel native/cpu/sparse_kl_div.cc computes the same formulas).
//
// Kernels, in stream order:
//  1. count_selected (1 block): the selected-row count (integer) -> workspace[0].
//  2. sparse_rows<DT, TAIL> (one block of tuning::kCudaSparseThreads per row):
//     a. the row's k slots: sort keys (id << 32 | slot) in shared memory (ids checked
//        against [0, V): a bad id makes the row NaN instead of reading out of bounds);
//        'bucket' also puts the ids in a shared open-addressing hash set;
//     b. pass 1 over z (DRAM): per-thread online log-sum-exp of z/T -> m, S (fixed-tree
//        block merge); 'bucket' also the tail's (non-id elements) own online sum, so
//        q_t is summed directly, never 1 - sum of the id masses;
//     c. bitonic sort of the slot keys (groups repeated ids, slot order inside a group);
//        slot reductions in double (fixed order): softmax of the teacher values,
//        conditional's softmax over the ids, W, sum p, the loss; each group leader
//        computes its id's final gradient value from z_id BEFORE any gradient is
//        written (so grad may alias the student);
//     d. pass W over z (L2/DRAM): grad_j = coef * q_j for every j (0 for 'conditional';
//        'bucket': coef * q_j/q_t, formed from the tail's own max and sum),
//        16-byte stores when aligned; a barrier; then the leaders overwrite their ids.
//  3. reduce_loss (1 block; reduced losses only): the per-row totals (double, in the
//     workspace) summed in a fixed order / divisor.
// Reads: z twice (the second pass mostly from L2 for rows up to a few hundred KiB);
// writes the gradient once. No float atomics; every sum has a fixed order.
#include <cstdint>

#include "common/select.h"
#include "common/sparse_kl_div.h"
#include "common/tuning.h"
#include "cuda/kernels.h"
#include "cuda/sparse_util.cuh"

namespace kd::cuda {
namespace {

using namespace sparse;

constexpr int kThreads = tuning::kCudaSparseThreads;

__global__ void __launch_bounds__(kThreads) count_selected(SparseKlDivArgs a) {
  __shared__ long long scratch[33];
  long long c = 0;
  for (int64_t i = threadIdx.x; i < a.n; i += blockDim.x) c += row_selected(a.labels, a.ignore_index, a.mask, i) ? 1 : 0;
  c = block_reduce(c, [](long long p, long long q) { return p + q; }, scratch);
  if (threadIdx.x == 0) *static_cast<int64_t*>(a.workspace) = int64_t(c);
}

__global__ void __launch_bounds__(kThreads) reduce_loss(SparseKlDivArgs a) {
  __shared__ double scratch[33];
  const double* rowtot = static_cast<const double*>(a.workspace) + 4;
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < a.n; i += blockDim.x) s += rowtot[i];
  s = block_reduce(s, [](double p, double q) { return p + q; }, scratch);
  if (threadIdx.x == 0) {
    const double divisor = loss_divisor(a.reduction, *static_cast<const int64_t*>(a.workspace), a.v, a.normalizer);
    *a.loss = divisor > 0.0 ? float(s / divisor) : 0.0f;
  }
}

KD_SDEV uint32_t hash_slot(int32_t id, uint32_t mask) { return (uint32_t(id) * 2654435761u) & mask; }

KD_SDEV bool is_id(const int32_t* table, uint32_t mask, int32_t j) {
  uint32_t h = hash_slot(j, mask);
  for (;;) {
    const int32_t t = table[h];
    if (t == j) return true;
    if (t == -1) return false;
    h = (h + 1) & mask;
  }
}

// Writes `val` over a whole gradient row.
KD_SDEV void fill_row(void* grow, int32_t gdt, int64_t v, bool gvec, float val) {
  const float g[8] = {val, val, val, val, val, val, val, val};
  const int64_t n8 = (v + kChunk8 - 1) / kChunk8;
  for (int64_t c = threadIdx.x; c < n8; c += blockDim.x) {
    const int nv = v - c * kChunk8 >= 8 ? 8 : int(v - c * kChunk8);
    store8(grow, gdt, c * kChunk8, nv, gvec, g);
  }
}

template <int DT, int TAIL>
__global__ void __launch_bounds__(kThreads) sparse_rows(SparseKlDivArgs a, float inv_t, uint32_t p2, uint32_t hsize) {
  KD_SPARSE_DYN_SMEM(uint64_t, smem);
  uint64_t* order = smem;                                       // [p2] sort keys
  float* gval = reinterpret_cast<float*>(smem + p2);            // [p2] leaders' gradient values
  int32_t* table = reinterpret_cast<int32_t*>(gval + p2);       // [hsize] 'bucket' id set
  __shared__ Lse lse_scratch[33];
  __shared__ double dbl_scratch[33];
  __shared__ int int_scratch[33];

  const int64_t i = blockIdx.x;
  const int64_t v = a.v, k = a.k;
  const int tid = int(threadIdx.x), nthr = int(blockDim.x);
  using T = typename Elem<DT>::T;
  const T* zrow = static_cast<const T*>(a.s) + i * a.lds;
  const bool vec = aligned16(zrow);
  void* grow = a.grad ? static_cast<char*>(a.grad) + i * a.ldg * dtype_size(a.g_dtype) : nullptr;
  const bool gvec = grow && aligned16(grow);
  double* rowtot = static_cast<double*>(a.workspace) + 4;
  const double divisor = loss_divisor(a.reduction, *static_cast<const int64_t*>(a.workspace), v, a.normalizer);
  const double nan = __builtin_nan("");

  if (!row_selected(a.labels, a.ignore_index, a.mask, i)) {
    if (grow) fill_row(grow, a.g_dtype, v, gvec, 0.0f);
    if (tid == 0) {
      rowtot[i] = 0.0;
      if (a.reduction == kNone) a.loss[i] = 0.0f;
    }
    return;
  }

  // ---- a. slots ---------------------------------------------------------------------
  const int32_t* ids = a.ids + i * k;
  const uint32_t hmask = hsize - 1;
  if (TAIL == kBucket)
    for (uint32_t h = tid; h < hsize; h += nthr) table[h] = -1;
  int bad = 0;
  for (uint32_t j = tid; j < p2; j += nthr) {
    if (int64_t(j) < k) {
      const int32_t id = ids[j];
      bad |= (id < 0 || int64_t(id) >= v) ? 1 : 0;
      order[j] = (uint64_t(uint32_t(id)) << 32) | j;
    } else {
      order[j] = ~0ull;
    }
  }
  bad = block_reduce(bad, [](int p, int q) { return p | q; }, int_scratch);
  if (bad) {  // an id outside [0, V): this row's loss and gradient are NaN
    if (grow) fill_row(grow, a.g_dtype, v, gvec, __builtin_nanf(""));
    if (tid == 0) {
      rowtot[i] = nan;
      if (a.reduction == kNone) a.loss[i] = __builtin_nanf("");
    }
    return;
  }
  if (TAIL == kBucket) {
    for (int64_t j = tid; j < k; j += nthr) {
      const int32_t id = ids[j];
      uint32_t h = hash_slot(id, hmask);
      for (;;) {
        const int32_t prev = atomicCAS(&table[h], -1, id);
        if (prev == -1 || prev == id) break;
        h = (h + 1) & hmask;
      }
    }
    __syncthreads();
  }

  // ---- b. pass 1: softmax statistics (and the direct tail sum) -----------------------
  Lse all = lse_identity(), tl = lse_identity();
  const int64_t n8 = (v + kChunk8 - 1) / kChunk8;
  for (int64_t c = tid; c < n8; c += nthr) {
    float x[8];
    const int nv = load8<DT>(zrow, v, c * kChunk8, vec, x);
    for (int e = 0; e < nv; ++e) {
      lse_add(all, x[e], inv_t);
      if (TAIL == kBucket && !is_id(table, hmask, int32_t(c * kChunk8 + e))) lse_add(tl, x[e], inv_t);
    }
  }
  auto merge = [inv_t](Lse p, Lse q) { return lse_merge(p, q, inv_t); };
  all = block_reduce(all, merge, lse_scratch);
  if (TAIL == kBucket) tl = block_reduce(tl, merge, lse_scratch);
  const float m = all.m;
  const double md = double(m), inv_td = 1.0 / double(a.temperature);
  const double log_s = log(double(all.s));  // log q_j = (z_j - m)/T - log_s

  // ---- c. sort the slots; row reductions over the slots -------------------------------
  for (uint32_t size = 2; size <= p2; size <<= 1) {
    for (uint32_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (uint32_t j = tid; j < p2; j += nthr) {
        const uint32_t l = j ^ stride;
        if (l > j) {
          const uint64_t x = order[j], y = order[l];
          const bool asc = (j & size) == 0;
          if (asc ? x > y : x < y) {
            order[j] = y;
            order[l] = x;
          }
        }
      }
      __syncthreads();
    }
  }
  auto lq_of = [&](int32_t id) { return (double(Elem<DT>::load(zrow + id)) - md) * inv_td - log_s; };
  auto value = [&](int64_t j) { return double(load_as_f32(a.values, a.values_dtype, i * k + j)); };
  auto dsum = [](double p, double q) { return p + q; };
  auto dmax = [](double p, double q) { return p != p ? p : (q != q || q > p) ? q : p; };  // NaN wins
  double L = 0.0, A = 0.0, a_all = 0.0;
  double vm = 0.0, vls = 0.0, qm = 0.0, qls = 0.0, sp = 0.0, W = 0.0;
  if (TAIL == kSampled) {
    const float* w = a.sample_weights + i * k;
    double l = 0.0, ws = 0.0;
    for (int64_t j = tid; j < k; j += nthr) {
      const double wj = w[j];
      if (wj == 0.0) continue;
      l -= wj * lq_of(ids[j]);
      ws += wj;
    }
    L = block_reduce(l, dsum, dbl_scratch);
    W = block_reduce(ws, dsum, dbl_scratch);
    A = a_all = W * inv_td;
  } else if (TAIL == kBucket) {
    double l = 0.0, ps = 0.0;
    for (int64_t j = tid; j < k; j += nthr) {
      const double vj = value(j), pj = exp(vj);
      ps += pj;
      if (pj != 0.0) l += pj * (vj - lq_of(ids[j]));
    }
    L = block_reduce(l, dsum, dbl_scratch);
    sp = block_reduce(ps, dsum, dbl_scratch);
    const double lpt = a.tail_logprob[i], pt = exp(lpt);
    sp += pt;
    const double lqt = tl.m == -kInfF ? -double(kInfF) : log(double(tl.s)) + (double(tl.m) - md) * inv_td - log_s;
    if (pt != 0.0) L += pt * (lpt - lqt);
    A = sp * inv_td;
    // Off the ids dz_j = q_j (S_p - p_t/q_t)/T = (q_j/q_t) (S_p q_t - p_t)/T: pass W forms
    // q_j/q_t = e^{(z_j - tl.m)/T} / tl.s (<= 1) directly, never q_j and q_t in f32 (q_t
    // may underflow while q_j/q_t is O(1)). a_all is that bracket (S_p q_t - p_t)/T.
    a_all = (sp * exp(lqt) - pt) * inv_td;
    if (log_s != log_s) a_all = nan;
  } else {  // renormalize, conditional
    double mv = -double(kInfF), mq = -double(kInfF);
    for (int64_t j = tid; j < k; j += nthr) {
      mv = dmax(mv, value(j));
      if (TAIL == kConditional) mq = dmax(mq, lq_of(ids[j]));
    }
    vm = block_reduce(mv, dmax, dbl_scratch);
    if (TAIL == kConditional) qm = block_reduce(mq, dmax, dbl_scratch);
    double sv = 0.0, sq = 0.0;
    for (int64_t j = tid; j < k; j += nthr) {
      sv += exp(value(j) - vm);
      if (TAIL == kConditional) sq += exp(lq_of(ids[j]) - qm);
    }
    vls = isfinite(vm) ? log(block_reduce(sv, dsum, dbl_scratch)) : nan;
    if (TAIL == kConditional) qls = isfinite(qm) ? log(block_reduce(sq, dsum, dbl_scratch)) : nan;
    if (!isfinite(vm)) vm = nan;
    if (TAIL == kConditional && !isfinite(qm)) qm = nan;
    double l = 0.0;
    for (int64_t j = tid; j < k; j += nthr) {
      const double lpj = value(j) - vm - vls, pj = exp(lpj);
      const double lqj = TAIL == kConditional ? lq_of(ids[j]) - qm - qls : lq_of(ids[j]);
      if (pj != 0.0) l += pj * (lpj - lqj);
    }
    L = block_reduce(l, dsum, dbl_scratch);
    A = a_all = TAIL == kConditional ? 0.0 : inv_td;
  }
  const double w_row = a.weights ? double(a.weights[i]) : 1.0;
  if (tid == 0) {
    const double tot = w_row * double(a.soft_weight) * L;
    rowtot[i] = tot;
    if (a.reduction == kNone) a.loss[i] = float(tot);
  }
  if (!grow) return;

  // Leaders (first sorted position of each distinct id) compute their id's gradient
  // value now, from z_id, before pass W may overwrite z (in place).
  const double f = (divisor > 0.0 ? double(a.grad_scale) / divisor : 0.0) * w_row * double(a.soft_weight);
  for (int64_t p = tid; p < k; p += nthr) {
    const int32_t id = int32_t(order[p] >> 32);
    if (p > 0 && int32_t(order[p - 1] >> 32) == id) continue;
    const double lq = lq_of(id);
    double corr = 0.0;
    for (int64_t r = p; r < k && int32_t(order[r] >> 32) == id; ++r) {
      const int64_t s = int64_t(order[r] & 0xffffffffu);
      if (TAIL == kSampled) corr += double(a.sample_weights[i * k + s]) * inv_td;
      else if (TAIL == kBucket) corr += exp(value(s)) * inv_td;
      else if (TAIL == kRenormalize) corr += exp(value(s) - vm - vls) * inv_td;
      else corr += (exp(value(s) - vm - vls) - exp(lq - qm - qls)) * inv_td;
    }
    gval[p] = float(f * (A == 0.0 ? -corr : A * exp(lq) - corr));
  }
  __syncthreads();

  // ---- d. pass W: the gradient row, then the ids ------------------------------------
  const float fa = float(f * a_all);
  const bool fa_finite = isfinite(fa);
  const float inv_s = float(1.0 / double(all.s));
  // 'bucket': q_j/q_t = e^{(z_j - tl.m)/T} / tl.s; no tail (tl.m = -inf): every non-id is 0.
  const bool notail = TAIL == kBucket && tl.m == -kInfF;
  const float tshift = TAIL == kBucket ? tl.m : m;
  const float inv_ts = TAIL == kBucket ? float(1.0 / double(tl.s)) : inv_s;
  for (int64_t c = tid; c < n8; c += nthr) {
    float x[8], g[8];
    const int nv = load8<DT>(zrow, v, c * kChunk8, vec, x);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      if (TAIL == kConditional) {
        g[e] = 0.0f;
      } else {
        // q_j ('bucket': q_j/q_t; the ids' values, possibly inf, are overwritten below)
        const float q = notail ? 0.0f : expf((x[e] - tshift) * inv_t) * inv_ts;
        g[e] = fa_finite ? fa * q : (q == 0.0f && (TAIL != kBucket || fa == fa) ? 0.0f : q * fa);
      }
    }
    store8(grow, a.g_dtype, c * kChunk8, nv, gvec, g);
  }
  __syncthreads();  // the leaders' writes below land after every pass-W write
  for (int64_t p = tid; p < k; p += nthr) {
    const int32_t id = int32_t(order[p] >> 32);
    if (p > 0 && int32_t(order[p - 1] >> 32) == id) continue;
    store_from_f32(grow, a.g_dtype, id, gval[p]);
  }
}

template <int DT, int TAIL>
Status launch_rows(const SparseKlDivArgs& a, float inv_t, uint32_t p2, uint32_t hsize, size_t smem, cudaStream_t stream) {
  Status s = allow_smem(sparse_rows<DT, TAIL>, a.device, smem);
  if (!s.ok()) return s;
  KD_SPARSE_LAUNCH((sparse_rows<DT, TAIL>), unsigned(a.n), kThreads, smem, stream, a, inv_t, p2, hsize);
  return launch_status();
}

template <int DT>
Status launch_tail(const SparseKlDivArgs& a, float inv_t, uint32_t p2, uint32_t hsize, size_t smem, cudaStream_t stream) {
  switch (a.tail) {
    case kRenormalize: return launch_rows<DT, kRenormalize>(a, inv_t, p2, hsize, smem, stream);
    case kBucket: return launch_rows<DT, kBucket>(a, inv_t, p2, hsize, smem, stream);
    case kConditional: return launch_rows<DT, kConditional>(a, inv_t, p2, hsize, smem, stream);
    default: return launch_rows<DT, kSampled>(a, inv_t, p2, hsize, smem, stream);
  }
}

}  // namespace

Status sparse_kl_div(const SparseKlDivArgs& a) {
  if (a.n < 0 || (a.n > 0 && a.v < 1) || a.k < 0) return make_status(kShape, "sparseKlDiv: need n >= 0, v >= 1, k >= 0");
  if (a.tail < kRenormalize || a.tail > kSampled) return make_status(kInvalid, "sparseKlDiv: unknown tail mode");
  if (a.reduction < kNone || a.reduction > kBatchMean) return make_status(kInvalid, "sparseKlDiv: unknown reduction");
  if (!(a.temperature > 0.0f)) return make_status(kInvalid, "sparseKlDiv: temperature must be > 0");
  if (!a.workspace) return make_status(kInvalid, "sparseKlDiv: missing CUDA workspace");
  if (a.n > 0) {
    if (a.k < 1 || a.k > kSparseMaxSlots) return make_status(kShape, "sparseKlDiv: 1 to 4096 teacher slots per row");
    if (a.v > int64_t(0x7fffffff) || a.n > int64_t(0x7fffffff)) return make_status(kShape, "sparseKlDiv: V and N must fit in int32");
    if (!dtype_is_float(a.s_dtype) || (a.grad && !dtype_is_float(a.g_dtype)) || (a.tail != kSampled && !dtype_is_float(a.values_dtype)))
      return make_status(kDtype, "sparseKlDiv: logits, values and gradient must be f32, f16 or bf16");
    if (!a.s || !a.ids || (a.tail == kSampled ? !a.sample_weights : !a.values) || (a.tail == kBucket && !a.tail_logprob))
      return make_status(kInvalid, "sparseKlDiv: missing tensors for this tail mode");
  }
  Status s = select_device(a.device);
  if (!s.ok()) return s;
  cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  KD_SPARSE_LAUNCH(count_selected, 1u, kThreads, 0, stream, a);
  s = launch_status();
  if (!s.ok()) return s;
  if (a.n > 0) {
    const SparseSmem plan = sparse_rows_smem(a.k, a.tail == kBucket);  // common/cuda_plan.h
    const uint32_t p2 = plan.p2, hsize = plan.hsize;
    const size_t smem = plan.bytes;
    const float inv_t = 1.0f / a.temperature;
    switch (a.s_dtype) {
      case kF32: s = launch_tail<kF32>(a, inv_t, p2, hsize, smem, stream); break;
      case kF16: s = launch_tail<kF16>(a, inv_t, p2, hsize, smem, stream); break;
      default: s = launch_tail<kBF16>(a, inv_t, p2, hsize, smem, stream); break;
    }
    if (!s.ok()) return s;
  }
  if (a.reduction != kNone && a.loss) {
    KD_SPARSE_LAUNCH(reduce_loss, 1u, kThreads, 0, stream, a);
    s = launch_status();
  }
  return s;
}

}  // namespace kd::cuda
