// cudaDebug*: the CUDA kernels' GPU-independent logic run on the CPU, for the test suite
// (test/cuda_plan.test.ts). Compiled into every build, CPU-only ones included: it calls
// only the host + device headers native/common/cuda_plan.h and cuda_rowstats.h, the
// very functions the kernels call. Not public API (binding.d.ts marks it so).
//
//  cudaDebugPlan({ op: 'divergence', v, sDtype, tDtype, teacher, restage, perSm,
//                  reservedPerBlock, optinPerBlock, staticBytes, clusters, maxCluster })
//    -> the divergence rows kernel's plan for a device with those shared-memory
//       attributes (cluster size, staged sweeps, dynamic shared memory, budget) and
//       every rank's slice. fits(cl, smem), the occupancy query on a GPU, is modelled as
//       cl <= maxCluster and smem <= optin - static.
//  cudaDebugPlan({ op: 'sparse', k, bucket }) / ({ op: 'sample', v }): dynamic shared
//    memory of sparse_rows / sample_rows.
//  cudaDebugStageOffset(sweep, word, words, tid) -> byte offset in the staging area.
//  cudaDebugRowStats({ s, t, v, cl, temperature, teacherLogprobs })
//    -> the online softmax statistics of one row (f32 values; t may be absent) exactly as
//       token_stats_rows (cl = 1) / divergence_rows compute them: each of the cl blocks
//       takes row_slice(v, cl, rank), each of its kRowThreads threads runs pair_update on
//       its chunks in sweep order, block_allreduce's tree merges the threads, the cluster
//       tree merges the blocks, row_results gives the per-row values. Only ex2 / lg2
//       differ from the GPU (libm on the host, MUFU there).
#include <cmath>
#include <string>
#include <vector>

#include "binding/args.h"
#include "common/cuda_plan.h"
#include "common/cuda_rowstats.h"
#include "common/dtype.h"
#include "common/tuning.h"

namespace kd::binding {
namespace {

using namespace kd::cuda;

double Num(const Napi::Object& o, const char* key, double fallback, bool required = false) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) {
    if (required) Throw(o.Env(), "KD_EINVAL", std::string("cudaDebug: option '") + key + "' is required");
    return fallback;
  }
  if (!v.IsNumber()) Throw(o.Env(), "KD_EINVAL", std::string("cudaDebug: option '") + key + "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

int64_t Int(const Napi::Object& o, const char* key, int64_t fallback, int64_t lo, int64_t hi, bool required = false) {
  const double d = Num(o, key, double(fallback), required);
  if (!(std::floor(d) == d && d >= double(lo) && d <= double(hi)))
    Throw(o.Env(), "KD_EINVAL",
          std::string("cudaDebug: option '") + key + "' must be an integer in [" + std::to_string(lo) + ", " +
              std::to_string(hi) + "], got " + std::to_string(d));
  return int64_t(d);
}

Napi::Object ArgsObject(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsObject()) Throw(info.Env(), "KD_EINVAL", "cudaDebug: expected an options object");
  return info[0].As<Napi::Object>();
}

Napi::Value CudaDebugPlan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = ArgsObject(info);
  const std::string op = o.Get("op").IsString() ? o.Get("op").As<Napi::String>().Utf8Value() : "";
  Napi::Object r = Napi::Object::New(env);
  if (op == "sparse") {
    const SparseSmem s = sparse_rows_smem(Int(o, "k", 0, 1, 1 << 20, true), o.Get("bucket").ToBoolean().Value());
    r.Set("p2", double(s.p2));
    r.Set("hsize", double(s.hsize));
    r.Set("bytes", double(s.bytes));
    return r;
  }
  if (op == "sample") {
    const int64_t v = Int(o, "v", 0, 1, int64_t(1) << 40, true);
    r.Set("chunks", double(sample_chunks(v)));
    r.Set("bytes", double(sample_rows_smem(v)));
    return r;
  }
  if (op != "divergence") Throw(env, "KD_EINVAL", "cudaDebugPlan: op must be 'divergence', 'sparse' or 'sample'");
  const int64_t v = Int(o, "v", 0, 1, int64_t(1) << 40, true);
  const int32_t sdt = int32_t(Int(o, "sDtype", kF32, kF32, kBF16));
  const int32_t tdt = int32_t(Int(o, "tDtype", kF32, kF32, kBF16));
  const bool teacher = o.Get("teacher").IsUndefined() ? true : o.Get("teacher").ToBoolean().Value();
  const bool restage = o.Get("restage").IsUndefined() ? true : o.Get("restage").ToBoolean().Value();
  SmemLimits L;
  L.per_sm = Int(o, "perSm", 0, 0, int64_t(1) << 30, true);
  L.reserved_per_block = Int(o, "reservedPerBlock", 0, 0, int64_t(1) << 30, true);
  L.optin_per_block = Int(o, "optinPerBlock", 0, 0, int64_t(1) << 30, true);
  const int64_t static_bytes = Int(o, "staticBytes", 0, 0, int64_t(1) << 30);
  const bool clusters = o.Get("clusters").ToBoolean().Value();
  const int64_t max_cluster = Int(o, "maxCluster", tuning::kCudaMaxClusterBlocks, 1, 64);
  int fits_calls = 0;
  auto fits = [&](int cl, size_t smem) {
    ++fits_calls;
    return cl <= max_cluster && int64_t(smem) <= max_dynamic_smem(L, static_bytes);
  };
  const RowPlan p = plan_divergence_rows(v, sdt, tdt, teacher, restage, L, static_bytes, clusters, fits);
  r.Set("cl", p.cl);
  r.Set("stageSweeps", p.stage_sweeps);
  r.Set("smem", double(p.smem));
  r.Set("budget", double(p.budget));
  r.Set("perSweep", double(p.per_sweep));
  r.Set("scratch", double(kDivScratch));
  r.Set("rowThreads", kRowThreads);
  r.Set("blocksPerSm", tuning::kCudaRowBlocksPerSm);
  r.Set("maxDynamicSmem", double(max_dynamic_smem(L, static_bytes)));
  r.Set("residentDynamicSmem", double(dynamic_smem_for_residency(L, tuning::kCudaRowBlocksPerSm, static_bytes)));
  r.Set("fitsCalls", fits_calls);
  // The staging area as the kernel lays it out: the student's words, then the teacher's.
  const size_t stage_t = size_t(p.stage_sweeps) * size_t(kRowThreads) * 16u * size_t(chunk_words(sdt));
  r.Set("teacherStageOffset", double(kDivScratch + stage_t));
  Napi::Array slices = Napi::Array::New(env, size_t(p.cl));
  for (int rank = 0; rank < p.cl; ++rank) {
    const RowSlice s = row_slice(v, p.cl, rank);
    Napi::Array a = Napi::Array::New(env, 4);
    a.Set(0u, double(s.c0));
    a.Set(1u, double(s.c1));
    a.Set(2u, double(s.nchunks));
    a.Set(3u, double(s.sweeps));
    slices.Set(uint32_t(rank), a);
  }
  r.Set("slices", slices);
  return r;
}

Napi::Value CudaDebugStageOffset(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  for (size_t i = 0; i < 4; ++i)
    if (!info[i].IsNumber()) Throw(env, "KD_EINVAL", "cudaDebugStageOffset(sweep, word, words, tid): numbers expected");
  const int sweep = info[0].As<Napi::Number>().Int32Value(), w = info[1].As<Napi::Number>().Int32Value();
  const int W = info[2].As<Napi::Number>().Int32Value(), tid = info[3].As<Napi::Number>().Int32Value();
  if (sweep < 0 || w < 0 || w >= W || W < 1 || W > 2 || tid < 0 || tid >= kRowThreads)
    Throw(env, "KD_EINVAL", "cudaDebugStageOffset: sweep >= 0, 0 <= word < words <= 2, 0 <= tid < rowThreads");
  return Napi::Number::New(env, double(stage_offset(sweep, w, W, tid)));
}

Napi::Value CudaDebugRowStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = ArgsObject(info);
  const int64_t v = Int(o, "v", 0, 1, int64_t(1) << 26, true);
  const int cl = int(Int(o, "cl", 1, 1, 16));
  if ((cl & (cl - 1)) != 0) Throw(env, "KD_EINVAL", "cudaDebugRowStats: cl must be a power of two");
  auto f32 = [&](const char* key, bool required) -> const float* {
    Napi::Value x = o.Get(key);
    if (x.IsUndefined() && !required) return nullptr;
    if (!x.IsTypedArray() || x.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      Throw(env, "KD_EINVAL", std::string("cudaDebugRowStats: '") + key + "' must be a Float32Array");
    Napi::Float32Array a = x.As<Napi::Float32Array>();
    if (int64_t(a.ElementLength()) < v)
      Throw(env, "KD_ESHAPE", std::string("cudaDebugRowStats: '") + key + "' has fewer than v elements");
    return a.Data();
  };
  const float* z = f32("s", true);
  const float* t = f32("t", true);
  const double temp = Num(o, "temperature", 1.0);
  if (!(temp > 0.0 && std::isfinite(temp))) Throw(env, "KD_EINVAL", "cudaDebugRowStats: temperature must be finite and > 0");
  const bool logprobs = o.Get("teacherLogprobs").ToBoolean().Value();

  // The kernels' per-call constants (token_stats.cu / divergence.cu).
  PairConsts C;
  C.traw = logprobs && float(temp) == 1.0f;
  C.cs = kLog2e / float(temp);
  C.ct = C.traw ? kLog2e : C.cs;
  constexpr unsigned F = kHasTeacher | kAccA | kAccB | kAccDq | kAccDp;
  auto merge = [&](const PairStats& a, const PairStats& b) { return pair_merge<F>(a, b, C); };

  std::vector<PairStats> ranks(static_cast<size_t>(cl));
  std::vector<PairStats> threads(static_cast<size_t>(kRowThreads));
  for (int rank = 0; rank < cl; ++rank) {
    const RowSlice sl = row_slice(v, cl, rank);
    for (int tid = 0; tid < kRowThreads; ++tid) {
      PairStats st = pair_identity(C.traw);
      for (int sw = 0; sw < sl.sweeps; ++sw) {
        const int32_t c = chunk_index(sw, tid);
        if (c >= sl.nchunks) break;
        const int64_t col = chunk_col(sl, c);
        const int nv = chunk_len(sl, col);
        float zz[kChunk], tt[kChunk];
        for (int k = 0; k < kChunk; ++k) {
          zz[k] = k < nv ? z[col + k] : 0.0f;
          tt[k] = k < nv ? t[col + k] : 0.0f;
        }
        pad_chunk(zz, nv);
        pad_chunk(tt, nv);
        pair_update<F>(st, zz, tt, nv, C);
      }
      threads[size_t(tid)] = st;
    }
    ranks[size_t(rank)] = block_reduce_host(threads.data(), kRowThreads, merge);
  }
  PairStats S = cl > 1 ? tree_reduce_host(ranks.data(), cl, merge) : ranks[0];
  const RowResults rr = row_results(S, C.traw);

  Napi::Object r = Napi::Object::New(env);
  r.Set("ms", double(S.ms)); r.Set("ss", double(S.ss)); r.Set("mt", double(S.mt)); r.Set("st", double(S.st));
  r.Set("a", double(S.a)); r.Set("b", double(S.b)); r.Set("dq", double(S.dq)); r.Set("dp", double(S.dp));
  r.Set("forwardKl", double(rr.fkl));
  r.Set("reverseKl", double(rr.rkl));
  r.Set("studentEntropy", double(rr.hq));
  r.Set("teacherEntropy", double(rr.hp));
  return r;
}

}  // namespace

Napi::Object InitCudaDebug(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaDebugPlan", Napi::Function::New(env, CudaDebugPlan));
  exports.Set("cudaDebugStageOffset", Napi::Function::New(env, CudaDebugStageOffset));
  exports.Set("cudaDebugRowStats", Napi::Function::New(env, CudaDebugRowStats));
  return exports;
}

}  // namespace kd::binding
