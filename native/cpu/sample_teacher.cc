// sampleTeacher on the CPU: per row (x [V], stride ldx), `samples` ids drawn with
// replacement from the proposal r ∝ p^tau, p = softmax(x/T), with importance weights
// p_id / (samples r_id) and log p_id. The algorithm (fixed-point proposal, exact
// integer inverse CDF, counter-based randomness) is defined in common/sample_teacher.h
// and shared with the CUDA kernel, which draws the same ids.
//
// Passes over a row (rows split over the thread pool; each row's work is sequential,
// so results do not depend on the thread count):
//   1. max m (and NaN / +inf detection), block by block.
//   2. per element r_j = sample_exp((x_j - m) tau/T) (kept in a scratch row), per chunk
//      of tuning::kSampleChunk the exact integer sum of q_j = floor(r_j 2^s), and
//      S = sum e^{(x_j - m)/T} (fixed lanes per block, blocks in double; for tau = 1 the
//      r_j themselves).
//   3. per draw: 64 random bits -> target in [0, Q) -> binary search over the chunk
//      prefix sums -> a scan of one chunk of the cached r_j -> the id.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "common/sample_teacher.h"
#include "common/tuning.h"
#include "cpu/kernels.h"
#include "cpu/row.h"
#include "cpu/thread_pool.h"

namespace kd::cpu::KD_ISA {
namespace {

using row::for_lanes;
using row::kLanes;
using row::lane_sum;
using row::exp_f;
using row::kBlock;
using row::kInf;
using row::kNaN;
using row::load_block;
using row::row_ptr;


constexpr int64_t kChunk = tuning::kSampleChunk;
static_assert(kChunk % kBlock == 0 || kBlock % kChunk == 0, "chunks and blocks must nest");

struct SampleScratch {
  std::vector<float> r;           // proposal r_j of the current row (relative to its max)
  std::vector<uint64_t> prefix;   // exclusive prefix sums of q over the chunks, + total
  alignas(64) float buf[kBlock];
};

SampleScratch* sample_scratch(int64_t v) {
  static thread_local SampleScratch* s = nullptr;
  try {
    if (!s) s = new SampleScratch();
    if (int64_t(s->r.size()) < v) s->r.resize(size_t(v));
    const int64_t nc = (v + kChunk - 1) / kChunk + 1;
    if (int64_t(s->prefix.size()) < nc) s->prefix.resize(size_t(nc));
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
  return s;
}

void sample_row(const SampleTeacherArgs& a, int64_t i, SampleScratch* S) {
  const int64_t v = a.v, ns = a.samples;
  const void* xrow = row_ptr(a.x, a.x_dtype, a.ldx, i);
  int32_t* ids = a.indices + i * ns;
  float* w = a.weights + i * ns;
  float* lp = a.logprobs ? a.logprobs + i * ns : nullptr;

  // ---- pass 1: max and validity -----------------------------------------------------
  float m = -kInf;
  int32_t bad = 0;
  for (int64_t off = 0; off < v; off += kBlock) {
    const int64_t n = std::min(kBlock, v - off);
    const float* x = load_block(xrow, a.x_dtype, off, n, S->buf);
    int32_t nan[kLanes] = {};
    float mx[kLanes];
    for (int l = 0; l < kLanes; ++l) mx[l] = -kInf;
    for_lanes(n, [&](int64_t j, int l) {
      nan[l] |= (x[j] != x[j]) ? 1 : 0;
      mx[l] = x[j] > mx[l] ? x[j] : mx[l];
    });
    for (int l = 0; l < kLanes; ++l) {
      bad |= nan[l];
      m = mx[l] > m ? mx[l] : m;
    }
  }
  if (bad || !(m > -kInf && m < kInf)) {
    for (int64_t d = 0; d < ns; ++d) {
      ids[d] = 0;
      w[d] = kNaN;
      if (lp) lp[d] = kNaN;
    }
    return;
  }

  // ---- pass 2: proposal, chunk sums, softmax sum --------------------------------------
  const float inv_t = 1.0f / a.temperature;
  const float c = a.proposal_power / a.temperature;  // the one f32 division both backends do
  const bool same = a.proposal_power == 1.0f;        // r_j = e^{(x_j - m)/T} itself
  const int shift = sample_fixed_shift(v);
  const float scale = sample_fixed_scale(shift);
  float* r = S->r.data();
  uint64_t* prefix = S->prefix.data();
  double s_p = 0.0;
  uint64_t run = 0;
  int64_t chunk = 0;
  prefix[0] = 0;
  for (int64_t off = 0; off < v; off += kBlock) {
    const int64_t n = std::min(kBlock, v - off);
    const float* x = load_block(xrow, a.x_dtype, off, n, S->buf);
    float* rb = r + off;
    for (int64_t j = 0; j < n; ++j) {
      const float xv = x[j];
      rb[j] = xv == -kInf ? 0.0f : sample_exp((xv - m) * c);
    }
    if (same) {
      float acc[kLanes] = {};
      for_lanes(n, [&](int64_t j, int l) { acc[l] += rb[j]; });
      s_p += double(lane_sum(acc));
    } else {
      float acc[kLanes] = {};
      for_lanes(n, [&](int64_t j, int l) { acc[l] += exp_f((x[j] - m) * inv_t); });
      s_p += double(lane_sum(acc));
    }
    // Integer chunk sums (exact: order free). Chunks nest with blocks.
    for (int64_t j0 = 0; j0 < n; j0 += std::min(kChunk, n)) {
      const int64_t len = std::min(std::min(kChunk, n), n - j0);
      uint64_t cs = 0;
      for (int64_t j = 0; j < len; ++j) cs += uint64_t(rb[j0 + j] * scale);
      run += cs;
      if ((off + j0 + len) % kChunk == 0 || off + j0 + len == v) prefix[++chunk] = run;
    }
  }
  const int64_t nchunks = chunk;
  const uint64_t Q = run;  // > 0: the max element has r = 1, q = 2^s

  // ---- draws ------------------------------------------------------------------------
  const double log_s = std::log(s_p);
  const double inv_td = 1.0 / double(a.temperature);
  for (int64_t d = 0; d < ns; ++d) {
    const uint64_t t = sample_mulhi(sample_random(a.seed, uint64_t(i), uint64_t(d)), Q);
    // the chunk c with prefix[c] <= t < prefix[c + 1]
    const int64_t cidx = int64_t(std::upper_bound(prefix + 1, prefix + nchunks + 1, t) - (prefix + 1));
    uint64_t acc = prefix[cidx];
    const int64_t lo = cidx * kChunk, hi = std::min(v, lo + kChunk);
    int64_t id = hi - 1;
    uint64_t qid = 0;
    for (int64_t j = lo; j < hi; ++j) {
      const uint64_t q = uint64_t(r[j] * scale);
      if (t < acc + q) {
        id = j;
        qid = q;
        break;
      }
      acc += q;
    }
    const double xl = double(load_as_f32(xrow, a.x_dtype, id)) - double(m);
    const double logp = xl * inv_td - log_s;
    ids[d] = int32_t(id);
    // p_id / (ns q_id / Q) = e^{logp} Q / (ns q_id)
    w[d] = float(std::exp(logp) * (double(Q) / (double(ns) * double(qid))));
    if (lp) lp[d] = float(logp);
  }
}

}  // namespace

Status sample_teacher(const SampleTeacherArgs& a) {
  if (a.n < 0 || (a.n > 0 && a.v < 1) || a.samples < 0) return make_status(kShape, "sampleTeacher: need n >= 0, v >= 1, samples >= 0");
  if (a.n == 0 || a.samples == 0) return ok_status();
  if (!(a.temperature > 0.0f && a.temperature < kInf)) return make_status(kInvalid, "sampleTeacher: temperature must be finite and > 0");
  if (!(a.proposal_power >= 0.0f && a.proposal_power < kInf)) return make_status(kInvalid, "sampleTeacher: proposalPower must be finite and >= 0");
  if (!dtype_is_float(a.x_dtype)) return make_status(kDtype, "sampleTeacher: logits must be f32, f16 or bf16");
  if (!a.x || !a.indices || !a.weights || a.ldx < a.v) return make_status(kShape, "sampleTeacher: missing tensors or row stride < V");
  if (a.v > int64_t(0x7fffffff)) return make_status(kShape, "sampleTeacher: V must fit in int32");

  std::atomic<bool> nomem{false};
  auto run_rows = [&](int64_t b, int64_t e) {
    SampleScratch* S = sample_scratch(a.v);
    if (!S) {
      nomem.store(true);
      return;
    }
    for (int64_t i = b; i < e; ++i) sample_row(a, i, S);
  };
  if (a.n * a.v < tuning::kCpuSerialElems) run_rows(0, a.n);
  else parallel_for(a.n, tuning::kCpuRowGrain, run_rows);
  if (nomem.load()) return make_status(kNoMem, "sampleTeacher: out of memory for scratch");
  return ok_status();
}

}  // namespace kd::cpu::KD_ISA
