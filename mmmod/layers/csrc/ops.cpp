// The CPU kernels of the MoD block's ops, and their CUDA kernels (the
// composites in ATen ops), registered with PyTorch's dispatcher
// (TORCH_LIBRARY_IMPL below). The schemas and the rest of each op
// (composite implementation for other devices, fake tensor rule, autograd)
// are in mmmod/layers/ops.py, which imports this module; their ONNX forms are
// in mmmod/deployment/onnx.py.
//
//   select_channels: the channel means (an input) -> Linear -> ReLU ->
//                    Linear -> top-k of the logits -> sigmoid, and the
//                    chosen channels copied out. Top-k and sigmoid are the
//                    kernel's own (top_k_rows), in the composite's order:
//                    largest first, exact ties to the lower channel; in
//                    float32 at batch 1 the linears are the kernel's own
//                    (selector_logits); both equal ATen's to rounding. The
//                    kernel saves the Python calls, the small ATen calls
//                    and the gather's expanded index.
//   fuse_channels:   a new map: x, with y * scores added to k of its
//                    channels (one copy of x, then the k channels).
//   conv_chain:      a folded Conv-Block on a few channels (stride-1 convs,
//                    each with bias and optional ReLU / ReLU6, an optional
//                    residual add and final activation, optionally scaled
//                    per sample and channel) in one call: direct
//                    convolution, plane by plane. On k = 1..32 channels each
//                    oneDNN call costs more than the arithmetic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>
#include <c10/core/InferenceMode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <tuple>
#include <vector>

namespace {

// elements per task of at::parallel_for: below this, a second thread costs
// more than it saves
constexpr int64_t kPlaneGrain = 1 << 15;

at::MemoryFormat layout_of(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

void check_map(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 4, "mmmod::", op, ": ", name,
              " must have shape (N, C, H, W), got ", t.sizes());
  // (an integer map would run the convs in integers and scale by 0)
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "mmmod::", op, ": ", name,
              " must be a floating-point map, got ", t.scalar_type());
}

// out[s, j] = x[s, idx[s, j]]: planes copied whole (NCHW) or per pixel
// (NHWC); out has x's layout.
template <typename T>
void copy_channels(const at::Tensor& x, const int64_t* idx, at::Tensor& out) {
  const int64_t n = x.size(0), c = x.size(1), k = out.size(1);
  const int64_t hw = x.size(2) * x.size(3);
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  // on every thread, as ATen's gather: a plane (NCHW) or a pixel (NHWC) each
  if (layout_of(x) == at::MemoryFormat::Contiguous) {
    at::parallel_for(0, n * k, kPlaneGrain / std::max<int64_t>(hw, 1) + 1,
                     [&](int64_t i0, int64_t i1) {
                       for (int64_t i = i0; i < i1; ++i)
                         std::copy_n(xp + (i / k * c + idx[i]) * hw, hw,
                                     op + i * hw);
                     });
  } else {
    // k scattered elements of each pixel's row of c, a cache line each:
    // the lines of the pixel kPrefetch rows ahead are requested while this
    // one is copied (from cold caches at batch 1, the op 5-27 % faster on
    // 256-512 channels)
    constexpr int64_t kPrefetch = 8;
    at::parallel_for(0, n * hw, kPlaneGrain / k + 1, [&](int64_t p0,
                                                         int64_t p1) {
      // a sample's pixels at a time: its channels, no division per pixel
      for (int64_t p = p0; p < p1;) {
        const int64_t s = p / hw, end = std::min(p1, (s + 1) * hw);
        const int64_t* sel = idx + s * k;
        for (; p < end; ++p) {
          const T* px = xp + p * c;
          T* po = op + p * k;
          if (p + kPrefetch < end)
            for (int64_t j = 0; j < k; ++j)
              __builtin_prefetch(px + kPrefetch * c + sel[j]);
          for (int64_t j = 0; j < k; ++j) po[j] = px[sel[j]];
        }
      }
    });
  }
}

// 16 running sums per dot product, one per lane: each lane's sum is the same
// sequence of rounded products and adds whatever the vector width (no FMA:
// -ffp-contract=off), so every clone gives the same bits.
__attribute__((target_clones("avx512f", "avx2", "default"))) float dot16(
    const float* a, const float* b, int64_t len) {
  float acc[16] = {};
  int64_t j = 0;
  for (; j + 16 <= len; j += 16)
    for (int q = 0; q < 16; ++q) acc[q] += a[j + q] * b[j + q];
  for (int w = 8; w >= 1; w /= 2)  // pairwise, lanes q and q + w
    for (int q = 0; q < w; ++q) acc[q] += acc[q + w];
  float sum = acc[0];
  for (; j < len; ++j) sum += a[j] * b[j];
  return sum;
}

// out (rows) = w (rows, cols) @ in (cols) + bias, ReLU'd if asked: a weight
// row at a time, rows split across threads.
void matvec(const float* w, const float* in, const float* bias, float* out,
            int64_t rows, int64_t cols, bool relu) {
  const int64_t grain = std::max<int64_t>(1, kPlaneGrain / 2 / (cols + 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float v = dot16(w + r * cols, in, cols);
      if (bias) v += bias[r];
      out[r] = relu && v < 0.f ? 0.f : v;
    }
  });
}

bool is_plain_float(const c10::optional<at::Tensor>& t) {
  return !t || (t->scalar_type() == at::kFloat && t->is_contiguous() &&
                t->device().is_cpu());
}

// The selector's logits: Linear -> ReLU -> Linear of the channel means,
// (N, C) in the selector's dtype. Float32 at batch 1 runs the two
// matrix-vector products here (each weight read once, by both threads), in
// plain buffers: in a network the weights come from memory and ATen's
// linear, a GEMM call, costs about twice as much (docs/speed.md), and each
// small ATen call (an at::empty, a sigmoid of k values) ~5-40 us from cold
// caches after a convolution. Larger batches (where a GEMM's blocking wins
// once the weights serve several images) and other dtypes run ATen's
// linear, as the composite.
struct SelectorLogits {
  at::Tensor tensor;         // ATen's linears (contiguous), or undefined
  std::vector<float> plain;  // the kernel's own, batch 1 float32
  const void* data() const {
    return tensor.defined() ? tensor.data_ptr() : plain.data();
  }
};

SelectorLogits selector_logits(const at::Tensor& means, const at::Tensor& w1,
                               const c10::optional<at::Tensor>& b1,
                               const at::Tensor& w2,
                               const c10::optional<at::Tensor>& b2) {
  // (shapes checked by check_select)
  if (!(means.size(0) == 1 && is_plain_float(means) && is_plain_float(w1) &&
        is_plain_float(b1) && is_plain_float(w2) && is_plain_float(b2)))
    return {at::linear(at::linear(means, w1, b1).relu(), w2, b2).contiguous(),
            {}};
  const int64_t hidden = w1.size(0), c = w2.size(0);
  std::vector<float> h(hidden), logits(c);
  matvec(w1.data_ptr<float>(), means.data_ptr<float>(),
         b1 ? b1->data_ptr<float>() : nullptr, h.data(), hidden,
         means.size(1), /*relu=*/true);
  matvec(w2.data_ptr<float>(), h.data(), b2 ? b2->data_ptr<float>() : nullptr,
         logits.data(), c, hidden, /*relu=*/false);
  return {at::Tensor(), std::move(logits)};
}

// The k largest logits of a row, largest first, as channels (idx) and
// their sigmoids (scores); exact ties go to the lower channel, NaN ranks
// above every number: the order of the composite's stable descending sort
// and of ONNX's TopK, so every device and runtime chooses the same channels
// in the same order (torch.topk's order among ties is its own). One pass
// over the row, the best k kept sorted: a logit that does not beat the
// k-th costs one comparison. The sigmoid is 1 / (1 + exp(-v)) in the
// op-math type, rounded to T: ATen's scalar form, which its CPU kernel also
// runs on fewer than two vectors of values (64 bytes with AVX2); on more,
// ATen's vectorised exp differs by up to two ulps.
template <typename T>
void top_k_row(const T* row, int64_t c, int64_t k, T* scores, int64_t* idx) {
  using acc_t = at::opmath_type<T>;
  // whether channel a ranks before channel b
  const auto before = [row](int64_t a, int64_t b) {
    const acc_t va = row[a], vb = row[b];
    const bool na = std::isnan(va), nb = std::isnan(vb);
    if (na != nb) return na;
    if (!na && va != vb) return va > vb;
    return a < b;
  };
  int64_t kept = 0;
  for (int64_t i = 0; i < c; ++i) {
    // i comes after every kept channel of its value: it never ties its
    // way in, and passes over its equals
    if (kept == k && !before(i, idx[k - 1])) continue;
    int64_t p = kept < k ? kept++ : k - 1;
    for (; p > 0 && before(i, idx[p - 1]); --p) idx[p] = idx[p - 1];
    idx[p] = i;
  }
  for (int64_t j = 0; j < k; ++j) {
    const acc_t v = row[idx[j]];
    scores[j] = static_cast<T>(acc_t(1) / (acc_t(1) + std::exp(-v)));
  }
}

// top_k_row of each row of the (N, C) logits in dtype: (scores, idx), both
// (N, k)
std::tuple<at::Tensor, at::Tensor> top_k_rows(const SelectorLogits& logits,
                                              at::ScalarType dtype, int64_t n,
                                              int64_t c, int64_t k) {
  auto scores = at::empty({n, k}, at::TensorOptions().dtype(dtype));
  auto idx = at::empty({n, k}, at::TensorOptions().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dtype, "top_k_rows", [&] {
        const auto* lp = static_cast<const scalar_t*>(logits.data());
        scalar_t* sp = scores.data_ptr<scalar_t>();
        int64_t* ip = idx.data_ptr<int64_t>();
        at::parallel_for(0, n, kPlaneGrain / (c + 1) + 1,
                         [&](int64_t r0, int64_t r1) {
                           for (int64_t r = r0; r < r1; ++r)
                             top_k_row(lp + r * c, c, k, sp + r * k,
                                       ip + r * k);
                         });
      });
  return {scores, idx};
}

void check_select(const at::Tensor& x, const at::Tensor& means,
                  const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                  const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                  int64_t k) {
  check_map(x, "select_channels", "x");
  const int64_t c = x.size(1);
  TORCH_CHECK(1 <= k && k <= c, "mmmod::select_channels: k=", k,
              " is not in [1, ", c, "]");
  TORCH_CHECK(means.dim() == 2 && means.size(0) == x.size(0) &&
                  means.size(1) == c,
              "mmmod::select_channels: means must have shape (", x.size(0),
              ", ", c, ") (x's channel means), got ", means.sizes());
  // a logit per channel of x: top-k's indices must name x's channels
  const int64_t hidden = w1.dim() == 2 ? w1.size(0) : -1;
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == c && w2.dim() == 2 &&
                  w2.size(0) == c && w2.size(1) == hidden &&
                  (!b1 || (b1->dim() == 1 && b1->size(0) == hidden)) &&
                  (!b2 || (b2->dim() == 1 && b2->size(0) == c)),
              "mmmod::select_channels: the selector's weights must be w1 (h, ",
              c, "), b1 (h), w2 (", c, ", h), b2 (", c, ") for x's ", c,
              " channels, got w1 ", w1.sizes(), ", b1 ",
              b1 ? b1->sizes() : at::IntArrayRef(), ", w2 ", w2.sizes(),
              ", b2 ", b2 ? b2->sizes() : at::IntArrayRef());
  const auto dtype = w1.scalar_type();
  TORCH_CHECK(at::isFloatingType(dtype) && w2.scalar_type() == dtype &&
                  (!b1 || b1->scalar_type() == dtype) &&
                  (!b2 || b2->scalar_type() == dtype),
              "mmmod::select_channels: the selector's weights and biases "
              "must share one floating dtype");
}

// The selector runs in its weights' dtype, never autocast's: the means are
// cast to it, and the chosen logits' sigmoid (the scores) is returned in
// x's dtype. So a float32 selector ranks in float32 under autocast too, at
// every batch size and on every device, and its backward computes in the
// dtype its forward did.
// (a dtype check first: the hot path's tensors already agree, and a
// dispatcher call per cast would cost more than the check)
at::Tensor in_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

at::Tensor selector_input(const at::Tensor& means, const at::Tensor& w1) {
  return in_dtype(means, w1.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_channels_cpu(
    const at::Tensor& x_any, const at::Tensor& means, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
    const c10::optional<at::Tensor>& b2, int64_t k) {
  check_select(x_any, means, w1, b1, w2, b2, k);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  auto [top, idx] =
      top_k_rows(selector_logits(selector_input(means, w1), w1, b1, w2, b2),
                 w1.scalar_type(), x_any.size(0), x_any.size(1), k);
  auto scores = in_dtype(top, x_any.scalar_type());
  const auto format = layout_of(x_any);
  const at::Tensor x = x_any.contiguous(format);
  auto out = at::empty({x.size(0), k, x.size(2), x.size(3)},
                       x.options().memory_format(format));
  AT_DISPATCH_ALL_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "select_channels",
      [&] { copy_channels<scalar_t>(x, idx.data_ptr<int64_t>(), out); });
  return {out, scores, idx};
}

// out[s, dst] += y[s, j] * scores[s, j] for the k target channels dst of
// each sample (out has x's shape and layout, y's layout).
template <typename T>
void add_channels(const at::Tensor& y, const T* sp,
                  const std::vector<int64_t>& dst, at::Tensor& out) {
  const int64_t n = out.size(0), c = out.size(1), k = y.size(1);
  const int64_t hw = out.size(2) * out.size(3);
  const T* yp = y.data_ptr<T>();
  T* op = out.data_ptr<T>();
  if (layout_of(out) == at::MemoryFormat::Contiguous) {
    // a sample per task: its targets may repeat (idx), and then add up
    at::parallel_for(0, n, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t i = s0 * k; i < s1 * k; ++i) {
        T* po = op + (i / k * c + dst[i]) * hw;
        const T* py = yp + i * hw;
        const T s = sp[i];
        for (int64_t p = 0; p < hw; ++p) {
          const T prod = py[p] * s;  // rounded before the add, as ATen
          po[p] += prod;
        }
      }
    });
  } else {
    at::parallel_for(0, n * hw, kPlaneGrain / k + 1,
                     [&](int64_t p0, int64_t p1) {
                       for (int64_t p = p0; p < p1; ++p) {
                         const int64_t s = p / hw;
                         T* po = op + p * c;
                         const T* py = yp + p * k;
                         for (int64_t j = 0; j < k; ++j) {
                           const T prod = py[j] * sp[s * k + j];
                           po[dst[s * k + j]] += prod;
                         }
                       }
                     });
  }
}

void check_fuse(const at::Tensor& x, const at::Tensor& y,
                const at::Tensor& scores, const at::Tensor& idx_any,
                int64_t offset) {
  check_map(x, "fuse_channels", "x");
  check_map(y, "fuse_channels", "y");
  const int64_t n = x.size(0), c = x.size(1), k = y.size(1);
  TORCH_CHECK(y.size(0) == n && y.size(2) == x.size(2) &&
                  y.size(3) == x.size(3) && k <= c,
              "mmmod::fuse_channels: y of shape ", y.sizes(),
              " does not fit x of shape ", x.sizes());
  TORCH_CHECK(y.scalar_type() == x.scalar_type() &&
                  scores.scalar_type() == x.scalar_type(),
              "mmmod::fuse_channels: x, y and scores must have one dtype, got ",
              x.scalar_type(), ", ", y.scalar_type(), ", ",
              scores.scalar_type());
  TORCH_CHECK(scores.dim() == 2 && scores.size(0) == n && scores.size(1) == k,
              "mmmod::fuse_channels: scores must have shape (", n, ", ", k,
              "), got ", scores.sizes());
  TORCH_CHECK(idx_any.scalar_type() == at::kLong && idx_any.dim() == 2 &&
                  idx_any.size(0) == n && idx_any.size(1) == k,
              "mmmod::fuse_channels: idx must be int64 of shape (", n, ", ", k,
              "), got ", idx_any.scalar_type(), " ", idx_any.sizes());
  TORCH_CHECK(offset < 0 || offset + k <= c, "mmmod::fuse_channels: offset=",
              offset, " + k=", k, " exceeds the ", c, " channels of x");
}

// Checks fuse_channels' arguments; returns each sample's target channels
// (read on the host: CPU tensors).
std::vector<int64_t> fuse_targets(const at::Tensor& x,
                                  const at::Tensor& y,
                                  const at::Tensor& scores,
                                  const at::Tensor& idx_any, int64_t offset) {
  check_fuse(x, y, scores, idx_any, offset);
  const int64_t n = x.size(0), c = x.size(1), k = y.size(1);
  const auto idx = idx_any.contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  std::vector<int64_t> dst(n * k);
  for (int64_t i = 0; i < n * k; ++i) {
    dst[i] = offset < 0 ? ip[i] : offset + i % k;
    TORCH_CHECK(0 <= dst[i] && dst[i] < c, "mmmod::fuse_channels: channel ",
                "index ", dst[i], " is not in [0, ", c, ")");
  }
  return dst;
}

at::Tensor fuse_channels_cpu(const at::Tensor& x_any, const at::Tensor& y_any,
                             const at::Tensor& scores_any,
                             const at::Tensor& idx_any, int64_t offset) {
  const auto dst =
      fuse_targets(x_any, y_any, scores_any, idx_any, offset);
  const auto format = layout_of(x_any);
  const at::Tensor x = x_any.contiguous(format);
  const at::Tensor y = y_any.contiguous(format);
  const at::Tensor scores = scores_any.contiguous();
  auto out = at::empty_like(x, x.options().memory_format(format));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fuse_channels", [&] {
        const scalar_t* xp = x.data_ptr<scalar_t>();
        scalar_t* op = out.data_ptr<scalar_t>();
        // the copy of x is the kernel's main cost: on every thread, as
        // clone()
        at::parallel_for(0, x.numel(), kPlaneGrain,
                         [&](int64_t i0, int64_t i1) {
                           std::copy(xp + i0, xp + i1, op + i0);
                         });
        add_channels<scalar_t>(y, scores.data_ptr<scalar_t>(), dst, out);
      });
  return out;
}

// Layer l of a conv chain: meta[6 l .. 6 l + 5] = pad_h, pad_w, dil_h,
// dil_w, groups, act (0 none, 1 ReLU, 2 ReLU6).
constexpr int64_t kMeta = 6;

template <typename T>
void activate(T* p, int64_t size, int64_t act) {
  if (act == 1) {
    for (int64_t i = 0; i < size; ++i) p[i] = p[i] < T(0) ? T(0) : p[i];
  } else if (act == 2) {
    for (int64_t i = 0; i < size; ++i)
      p[i] = p[i] < T(0) ? T(0) : (p[i] > T(6) ? T(6) : p[i]);
  }
}

// Output channels [co0, co1) of one stride-1 convolution of a sample. The
// input planes are zero-padded, `wp` wide; the output planes lie on the
// same `wp`-wide grid (columns w.. wp-1 are scratch), so that each weight
// is one long contiguous multiply-add over the whole plane, shifted, which
// vectorises whatever the map's width. Four output channels share each
// input load.
struct ConvGeometry {
  int64_t cin_g, cout_g, kh, kw, dil_h, dil_w, wp, plane_in, plane_out, len;
};

template <typename T>
__attribute__((always_inline)) inline void conv_channels(
    const T* __restrict in, const T* __restrict wt, const T* bias,
    T* __restrict out, const ConvGeometry& g, int64_t co0, int64_t co1) {
  const int64_t taps = g.kh * g.kw;
  for (int64_t co = co0; co < co1;) {
    const int64_t group = co / g.cout_g;
    // a block of up to four channels of one group
    const int64_t nb =
        std::min<int64_t>({4, co1 - co, (group + 1) * g.cout_g - co});
    T* o[4];
    for (int64_t b = 0; b < 4; ++b) o[b] = out + (co + std::min(b, nb - 1)) *
                                                     g.plane_out;
    for (int64_t b = 0; b < nb; ++b)
      std::fill(o[b], o[b] + g.plane_out, bias ? bias[co + b] : T(0));
    for (int64_t j = 0; j < g.cin_g; ++j) {
      const T* ip = in + (group * g.cin_g + j) * g.plane_in;
      for (int64_t r = 0; r < g.kh; ++r) {
        for (int64_t s = 0; s < g.kw; ++s) {
          const T* __restrict src = ip + r * g.dil_h * g.wp + s * g.dil_w;
          const int64_t tap = (j * g.kh + r) * g.kw + s;
          if (nb == 4) {
            const T w0 = wt[(co + 0) * g.cin_g * taps + tap];
            const T w1 = wt[(co + 1) * g.cin_g * taps + tap];
            const T w2 = wt[(co + 2) * g.cin_g * taps + tap];
            const T w3 = wt[(co + 3) * g.cin_g * taps + tap];
            T* __restrict o0 = o[0];
            T* __restrict o1 = o[1];
            T* __restrict o2 = o[2];
            T* __restrict o3 = o[3];
            for (int64_t i = 0; i < g.len; ++i) {
              const T v = src[i];
              o0[i] += w0 * v;
              o1[i] += w1 * v;
              o2[i] += w2 * v;
              o3[i] += w3 * v;
            }
          } else {
            for (int64_t b = 0; b < nb; ++b) {
              const T wv = wt[(co + b) * g.cin_g * taps + tap];
              T* __restrict ob = o[b];
              for (int64_t i = 0; i < g.len; ++i) ob[i] += wv * src[i];
            }
          }
        }
      }
    }
    co += nb;
  }
}

// float32 compiled for AVX2 too, chosen at load time by the CPU (function
// multiversioning, x86-64 ELF): the extension is built without -march
#if defined(__x86_64__) && defined(__ELF__) && defined(__GNUC__)
#define MMMOD_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MMMOD_AVX2_CLONES
#endif

MMMOD_AVX2_CLONES void conv_channels_f32(
    const float* in, const float* wt, const float* bias, float* out,
    const ConvGeometry& g, int64_t co0, int64_t co1) {
  conv_channels<float>(in, wt, bias, out, g, co0, co1);
}

void conv_channels_any(const float* in, const float* wt, const float* bias,
                       float* out, const ConvGeometry& g, int64_t co0,
                       int64_t co1) {
  conv_channels_f32(in, wt, bias, out, g, co0, co1);
}

void conv_channels_any(const double* in, const double* wt, const double* bias,
                       double* out, const ConvGeometry& g, int64_t co0,
                       int64_t co1) {
  conv_channels<double>(in, wt, bias, out, g, co0, co1);
}

// One conv layer of a sample: in (cin, h, w) -> out (cout, h, w), both
// compact planes; pad and grid are scratch.
template <typename T>
void conv_planes(const T* in, T* out, const at::Tensor& weight,
                 const c10::optional<at::Tensor>& bias, const int64_t* meta,
                 int64_t h, int64_t w, std::vector<T>& pad,
                 std::vector<T>& grid) {
  const int64_t cout = weight.size(0), cin_g = weight.size(1);
  const int64_t pad_h = meta[0], pad_w = meta[1], groups = meta[4];
  const int64_t cin = cin_g * groups, hw = h * w;
  ConvGeometry g{cin_g, cout / groups, weight.size(2), weight.size(3),
                 meta[2], meta[3], w + 2 * pad_w, 0, 0, 0};
  g.plane_in = (h + 2 * pad_h) * g.wp;
  g.plane_out = h * g.wp;
  g.len = (h - 1) * g.wp + w;  // the last row's scratch columns: not read
  const T* src = in;
  if (pad_h || pad_w) {
    pad.assign(cin * g.plane_in, T(0));
    for (int64_t c = 0; c < cin; ++c)
      for (int64_t y = 0; y < h; ++y)
        std::copy_n(in + c * hw + y * w, w,
                    pad.data() + c * g.plane_in + (y + pad_h) * g.wp + pad_w);
    src = pad.data();
  }
  T* dst = out;
  if (g.wp != w) {
    grid.resize(cout * g.plane_out);
    dst = grid.data();
  }
  const T* wp = weight.data_ptr<T>();
  const T* bp = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  // output channels on every thread when the layer is big enough to share
  const int64_t work = std::max<int64_t>(cin_g * g.kh * g.kw * hw, 1);
  at::parallel_for(0, cout, kPlaneGrain / work + 1, [&](int64_t c0,
                                                        int64_t c1) {
    conv_channels_any(src, wp, bp, dst, g, c0, c1);
  });
  if (dst != out)
    for (int64_t c = 0; c < cout; ++c)
      for (int64_t y = 0; y < h; ++y)
        std::copy_n(dst + c * g.plane_out + y * g.wp, w, out + c * hw + y * w);
  activate(out, cout * hw, meta[5]);
}

template <typename T>
void run_chain(const at::Tensor& x, at::TensorList weights,
               const std::vector<c10::optional<at::Tensor>>& biases,
               at::IntArrayRef meta, bool residual, int64_t final_act,
               const T* scale, at::Tensor& out) {
  const int64_t n = x.size(0), cin = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t hw = h * w, cout = out.size(1);
  const bool nchw = layout_of(x) == at::MemoryFormat::Contiguous;
  int64_t widest = cin;
  for (const auto& wt : weights) widest = std::max(widest, wt.size(0));
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  auto samples = [&](int64_t s0, int64_t s1) {
    // scratch, written before it is read: not zeroed
    std::unique_ptr<T[]> in_buf(new T[nchw ? 0 : cin * hw]),
        a(new T[widest * hw]), b(new T[widest * hw]);
    std::vector<T> pad, grid;
    for (int64_t s = s0; s < s1; ++s) {
      const T* in = xp + s * cin * hw;
      if (!nchw) {  // NHWC -> planes
        for (int64_t p = 0; p < hw; ++p)
          for (int64_t j = 0; j < cin; ++j) in_buf[j * hw + p] = in[p * cin + j];
        in = in_buf.get();
      }
      const T* cur = in;
      for (size_t l = 0; l < weights.size(); ++l) {
        T* dst = (l % 2 == 0) ? a.get() : b.get();
        conv_planes<T>(cur, dst, weights[l], biases[l],
                       meta.data() + l * kMeta, h, w, pad, grid);
        cur = dst;
      }
      T* res = const_cast<T*>(cur);
      if (residual)
        for (int64_t i = 0; i < cout * hw; ++i) res[i] += in[i];
      activate(res, cout * hw, final_act);
      if (scale)  // rounded after the activation, as the composite
        for (int64_t j = 0; j < cout; ++j)
          for (int64_t p = 0; p < hw; ++p)
            res[j * hw + p] *= scale[s * cout + j];
      T* o = op + s * cout * hw;
      if (nchw) {
        std::copy(res, res + cout * hw, o);
      } else {  // planes -> NHWC
        for (int64_t p = 0; p < hw; ++p)
          for (int64_t j = 0; j < cout; ++j) o[p * cout + j] = res[j * hw + p];
      }
    }
  };
  // a sample per task; a single sample on this thread, so that its layers
  // can share out their output channels (a nested parallel_for runs inline)
  if (n == 1) {
    samples(0, 1);
  } else {
    at::parallel_for(0, n, 1, samples);
  }
}

void activate_(at::Tensor& y, int64_t act) {
  if (act == 1) {
    y.relu_();
  } else if (act == 2) {
    at::hardtanh_(y, 0, 6);
  }
}

// conv_chain's arguments, checked, the weights, biases and scale in x's
// dtype (autocast leaves a custom op's weights as they are) and contiguous.
struct ChainArgs {
  std::vector<at::Tensor> weights;
  std::vector<c10::optional<at::Tensor>> biases;
  c10::optional<at::Tensor> scale;
  int64_t channels;  // of the output
};

ChainArgs chain_args(const at::Tensor& x, at::TensorList weights_any,
                     at::TensorList biases_any, at::IntArrayRef meta,
                     bool residual, int64_t final_act,
                     const c10::optional<at::Tensor>& scale_any) {
  check_map(x, "conv_chain", "x");
  const int64_t layers = static_cast<int64_t>(weights_any.size());
  TORCH_CHECK(layers >= 1 &&
                  static_cast<int64_t>(biases_any.size()) == layers &&
                  static_cast<int64_t>(meta.size()) == kMeta * layers,
              "mmmod::conv_chain: ", layers, " weights need as many biases ",
              "and ", kMeta, " meta values each, got ", biases_any.size(),
              " and ", meta.size());
  ChainArgs args;
  int64_t channels = x.size(1);
  for (int64_t l = 0; l < layers; ++l) {
    const auto& wt = weights_any[l];
    const int64_t* m = meta.data() + l * kMeta;
    TORCH_CHECK(wt.dim() == 4 && m[4] >= 1 && wt.size(0) % m[4] == 0 &&
                    wt.size(1) * m[4] == channels,
                "mmmod::conv_chain: layer ", l, ": weight ", wt.sizes(),
                " (groups ", m[4], ") does not take ", channels,
                " channels");
    TORCH_CHECK(m[0] >= 0 && m[1] >= 0 && m[2] >= 1 && m[3] >= 1 &&
                    2 * m[0] == m[2] * (wt.size(2) - 1) &&
                    2 * m[1] == m[3] * (wt.size(3) - 1) && m[5] >= 0 &&
                    m[5] <= 2,
                "mmmod::conv_chain: layer ", l, ": padding (", m[0], ", ",
                m[1], ") and dilation (", m[2], ", ", m[3], ") must keep ",
                "the size of the map, act must be 0, 1 or 2, got ", m[5]);
    args.weights.push_back(wt.to(x.scalar_type()).contiguous());
    const auto& b = biases_any[l];
    TORCH_CHECK(b.dim() == 1 && b.size(0) == wt.size(0),
                "mmmod::conv_chain: layer ", l, ": bias must have shape (",
                wt.size(0), ")");
    args.biases.push_back(b.to(x.scalar_type()).contiguous());
    channels = wt.size(0);
  }
  TORCH_CHECK(!residual || channels == x.size(1), "mmmod::conv_chain: the ",
              "residual add needs ", x.size(1), " output channels, got ",
              channels);
  TORCH_CHECK(0 <= final_act && final_act <= 2, "mmmod::conv_chain: ",
              "final_act must be 0, 1 or 2, got ", final_act);
  TORCH_CHECK(!scale_any || (scale_any->dim() == 2 &&
                             scale_any->size(0) == x.size(0) &&
                             scale_any->size(1) == channels),
              "mmmod::conv_chain: scale must have shape (", x.size(0), ", ",
              channels, "), got ", scale_any ? scale_any->sizes()
                                             : at::IntArrayRef{});
  if (scale_any) args.scale = scale_any->to(x.scalar_type()).contiguous();
  args.channels = channels;
  return args;
}

// Whether cuDNN's fused convolutions may serve x's chain: conv + bias +
// ReLU in one call (cudnn_convolution_relu) instead of a convolution, a
// bias add and a ReLU, three launches; and the last conv + bias + the
// residual + ReLU likewise (cudnn_convolution_add_relu). On an H200 they
// give the same float32 values and take ResNet75-MoD's eleven chains from
// 237 to 154 us of GPU time at batch 1 (docs/speed.md). Not where the user
// asks for deterministic algorithms (the fused path has no such choice).
//
// A fusion cuDNN finds no engine for raises; the chain then runs the plain
// ops, and no later call tries a fusion again (a failed engine search costs
// more than the fusion saves), with a warning, once.
std::atomic<bool> cudnn_fusion_failed{false};

bool cudnn_fusable(const at::Tensor& x) {
  const auto& ctx = at::globalContext();
  const auto t = x.scalar_type();
  return x.is_cuda() && !cudnn_fusion_failed.load() && ctx.hasCuDNN() &&
         ctx.userEnabledCuDNN() &&
         !ctx.deterministicCuDNN() && !ctx.deterministicAlgorithms() &&
         (t == at::kFloat || t == at::kHalf || t == at::kBFloat16);
}

// The chain in ATen ops, as the composite computes it (the activations, the
// residual add and the scale in place on the chain's own new tensors): CPU
// maps in half and bfloat16 (oneDNN's low-precision convolutions), and
// every map on the GPU, there with cuDNN's fusions where `fused`: an
// ungrouped conv followed by a ReLU is one fused call.
at::Tensor chain_with_aten(const at::Tensor& x, const ChainArgs& args,
                           at::IntArrayRef meta, bool residual,
                           int64_t final_act, bool fused = false) {
  at::Tensor y = x;
  const size_t layers = args.weights.size();
  for (size_t l = 0; l < layers; ++l) {
    const int64_t* m = meta.data() + l * kMeta;
    const auto& w = args.weights[l];
    const auto& b = args.biases[l];
    if (fused && m[4] == 1) {
      try {
        if (m[5] == 1) {
          y = at::cudnn_convolution_relu(y, w, b, {1, 1}, {m[0], m[1]},
                                         {m[2], m[3]}, 1);
          continue;
        }
        if (l + 1 == layers && m[5] == 0 && residual && final_act == 1) {
          auto out = at::cudnn_convolution_add_relu(
              y, w, x, 1, b, {1, 1}, {m[0], m[1]}, {m[2], m[3]}, 1);
          if (args.scale) out.mul_(args.scale->unsqueeze(-1).unsqueeze(-1));
          return out.contiguous(layout_of(x));
        }
      } catch (const c10::Error& e) {
        cudnn_fusion_failed = true;
        fused = false;
        TORCH_WARN_ONCE("mmmod::conv_chain: cuDNN's fused convolution failed (",
                        e.what_without_backtrace(), "); the chains run ",
                        "unfused convolutions from now on");
      }
    }
    y = at::conv2d(y, w, b, {1, 1}, {m[0], m[1]}, {m[2], m[3]}, m[4]);
    activate_(y, m[5]);
  }
  if (residual) y.add_(x);
  activate_(y, final_act);
  if (args.scale) y.mul_(args.scale->unsqueeze(-1).unsqueeze(-1));
  return y.contiguous(layout_of(x));
}

at::Tensor conv_chain_cpu(const at::Tensor& x_any, at::TensorList weights,
                          at::TensorList biases, at::IntArrayRef meta,
                          bool residual, int64_t final_act,
                          const c10::optional<at::Tensor>& scale) {
  check_map(x_any, "conv_chain", "x");
  // in x's dtype, as the fake says: the ATen convs of the half path must
  // not autocast
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto format = layout_of(x_any);
  const at::Tensor x = x_any.contiguous(format);
  const auto args =
      chain_args(x, weights, biases, meta, residual, final_act, scale);
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble)
    return chain_with_aten(x, args, meta, residual, final_act);
  auto out = at::empty({x.size(0), args.channels, x.size(2), x.size(3)},
                       x.options().memory_format(format));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_chain", [&] {
    run_chain<scalar_t>(x, args.weights, args.biases, meta, residual,
                        final_act,
                        args.scale ? args.scale->data_ptr<scalar_t>()
                                   : nullptr,
                        out);
  });
  return out;
}

// The GPU's kernels: ops.py's composites, in C++ ATen ops. An eager call
// then costs one dispatcher call, not torch.library's Python kernel and
// the Python of the composite (on a GPU at batch 1 the host's time per op
// is what a MoD block costs, docs/speed.md). Registered for CUDA; as
// device-generic ATen code they run on any tensors (the tests call them on
// CPU tensors through the dispatcher's CUDA entry).
std::tuple<at::Tensor, at::Tensor, at::Tensor> select_channels_aten(
    const at::Tensor& x, const at::Tensor& means, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
    const c10::optional<at::Tensor>& b2, int64_t k) {
  check_select(x, means, w1, b1, w2, b2, k);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  // the composite's top-k: a stable descending sort's first k
  auto [sorted, order] = at::sort(
      at::linear(at::linear(selector_input(means, w1), w1, b1).relu_(), w2,
                 b2),
      /*stable=*/true, /*dim=*/1, /*descending=*/true);
  // (clones: new (N, k) tensors, strided as the fake kernel's)
  auto logits = sorted.narrow(1, 0, k).clone(at::MemoryFormat::Contiguous);
  auto idx = order.narrow(1, 0, k).clone(at::MemoryFormat::Contiguous);
  auto x_k = x.gather(1, idx.unsqueeze(-1).unsqueeze(-1).expand(
                             {-1, -1, x.size(2), x.size(3)}))
                 .contiguous(layout_of(x));
  return {x_k, in_dtype(logits.sigmoid_(), x.scalar_type()), idx};
}

at::Tensor fuse_channels_aten(const at::Tensor& x, const at::Tensor& y,
                              const at::Tensor& scores, const at::Tensor& idx,
                              int64_t offset) {
  check_fuse(x, y, scores, idx, offset);
  auto out = x.clone(layout_of(x));
  const auto scaled = y * scores.unsqueeze(-1).unsqueeze(-1);
  if (offset < 0)
    return out.scatter_add_(
        1, idx.unsqueeze(-1).unsqueeze(-1).expand_as(scaled), scaled);
  out.narrow(1, offset, y.size(1)).add_(scaled);
  return out;
}

at::Tensor conv_chain_aten(const at::Tensor& x, at::TensorList weights,
                           at::TensorList biases, at::IntArrayRef meta,
                           bool residual, int64_t final_act,
                           const c10::optional<at::Tensor>& scale) {
  // in x's dtype, as the fake and the CPU kernel: its convs do not autocast
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return chain_with_aten(
      x, chain_args(x, weights, biases, meta, residual, final_act, scale),
      meta, residual, final_act, cudnn_fusable(x));
}

using SelectOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// idx (N, k) expanded to index t's (N, k, H, W) (ops.py: _expand)
at::Tensor expand_to(const at::Tensor& idx, const at::Tensor& t) {
  return idx.unsqueeze(-1).unsqueeze(-1).expand_symint(
      {idx.sym_size(0), idx.sym_size(1), t.sym_size(2), t.sym_size(3)});
}

// The ops' autograd, for every device: ops.py's _select_backward and
// _fuse_backward in the same ATen ops. In C++ so that a call without
// autograd (inference, validation) costs a check, not torch.library's
// Python autograd kernel (~40 us a call in a network at batch 1); the
// Python forms serve installs without this extension.

// Whether a call must be recorded for autograd: grad mode on and an input
// that requires grad; an input with a forward-mode tangent (whatever the
// grad mode) is an error, as the ops have no forward-mode AD. Otherwise
// the kernels below go straight to the device's kernel: an autograd Function
// (its node, saved tensors and state) costs ~15-25 us a call from cold
// caches, under torch.no_grad() too. They redispatch (below autograd, with
// the keys of the call) rather than call the op again: one call, one
// profiler event.
bool records_grad(const char* op,
                  std::initializer_list<const at::Tensor*> inputs) {
  const bool grad_mode = at::GradMode::is_enabled();
  bool grad = false;
  for (const auto* t : inputs) {
    if (!t->defined()) continue;
    TORCH_CHECK(!t->_fw_grad(/*level=*/0).defined(), "mmmod::", op,
                " has no forward-mode AD (an input has a forward-mode "
                "tangent): differentiate the model's training form with "
                "reverse-mode autograd");
    grad = grad || (grad_mode && t->requires_grad());
  }
  return grad;
}

const at::Tensor& or_undefined(const c10::optional<at::Tensor>& t) {
  static const at::Tensor undefined;
  return t ? *t : undefined;
}

using SelectSignature = SelectOutputs(const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&,
                                      const c10::optional<at::Tensor>&,
                                      const at::Tensor&,
                                      const c10::optional<at::Tensor>&,
                                      int64_t);

// mmmod::select_channels in the dispatcher
const c10::TypedOperatorHandle<SelectSignature>& select_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mmmod::select_channels", "")
                             .typed<SelectSignature>();
  return op;
}

struct SelectChannels : public torch::autograd::Function<SelectChannels> {
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const at::Tensor& x,
      const at::Tensor& means, const at::Tensor& w1,
      const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
      const c10::optional<at::Tensor>& b2, int64_t k) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [x_k, scores, idx] = select_op().call(x, means, w1, b1, w2, b2, k);
    ctx->saved_data["channels_last"] =
        layout_of(x) == at::MemoryFormat::ChannelsLast;
    ctx->saved_data["has_b1"] = b1.has_value() && b1->defined();
    ctx->saved_data["has_b2"] = b2.has_value() && b2->defined();
    ctx->save_for_backward({means, w1, b1 ? *b1 : at::Tensor(), w2,
                            b2 ? *b2 : at::Tensor(), scores, idx});
    ctx->mark_non_differentiable({idx});
    return {x_k, scores, idx};
  }

  // The gather's gradient (the chosen channels' gradients, back where they
  // came from) and the selector's (through the chosen logits).
  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &means = saved[0], &w1 = saved[1], &b1 = saved[2],
               &w2 = saved[3], &b2 = saved[4], &scores = saved[5],
               &idx = saved[6];
    const auto &g_xk = grads[0], &g_scores = grads[1];
    const bool has_b1 = ctx->saved_data["has_b1"].toBool();
    const bool has_b2 = ctx->saved_data["has_b2"].toBool();
    // in the selector's dtype, as its forward (select_channels' kernels)
    c10::impl::ExcludeDispatchKeyGuard no_autocast(
        c10::autocast_dispatch_keyset);
    const auto in = selector_input(means, w1);
    const auto format = ctx->saved_data["channels_last"].toBool()
                            ? at::MemoryFormat::ChannelsLast
                            : at::MemoryFormat::Contiguous;
    auto g_x = at::empty_symint({g_xk.sym_size(0), means.sym_size(1),
                                 g_xk.sym_size(2), g_xk.sym_size(3)},
                                g_xk.options(), format)
                   .zero_();
    g_x.scatter_add_(1, expand_to(idx, g_xk), g_xk);
    const auto pre = at::linear(
        in, w1, has_b1 ? c10::optional<at::Tensor>(b1) : c10::nullopt);
    // the sigmoid's slope in the forward's own precision: scores in a lower
    // one than the selector's round it (to 0 for confident channels in
    // bfloat16)
    const auto s =
        scores.scalar_type() == w1.scalar_type()
            ? scores
            : at::linear(pre.relu(), w2,
                         has_b2 ? c10::optional<at::Tensor>(b2) : c10::nullopt)
                  .gather(1, idx)
                  .sigmoid();
    const auto g_logits =
        at::zeros_symint({pre.sym_size(0), w2.sym_size(0)}, s.options())
            .scatter(1, idx,
                     in_dtype(g_scores, s.scalar_type()) * s * at::rsub(s, 1));
    const auto g_pre = at::matmul(g_logits, w2) * at::gt(pre, 0);
    return {g_x,
            in_dtype(at::matmul(g_pre, w1), means.scalar_type()),
            at::matmul(g_pre.t(), in),
            has_b1 ? g_pre.sum(0) : at::Tensor(),
            at::matmul(g_logits.t(), pre.relu()),
            has_b2 ? g_logits.sum(0) : at::Tensor(),
            at::Tensor()};
  }
};

using FuseSignature = at::Tensor(const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, const at::Tensor&,
                                 int64_t);

const c10::TypedOperatorHandle<FuseSignature>& fuse_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mmmod::fuse_channels", "")
                             .typed<FuseSignature>();
  return op;
}

using ChainSignature = at::Tensor(const at::Tensor&, at::TensorList,
                                  at::TensorList, at::IntArrayRef, bool,
                                  int64_t, const c10::optional<at::Tensor>&);

const c10::TypedOperatorHandle<ChainSignature>& chain_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mmmod::conv_chain", "")
                             .typed<ChainSignature>();
  return op;
}

struct FuseChannels : public torch::autograd::Function<FuseChannels> {
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const at::Tensor& x,
      const at::Tensor& y, const at::Tensor& scores, const at::Tensor& idx,
      int64_t offset) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = fuse_op().call(x, y, scores, idx, offset);
    ctx->saved_data["offset"] = offset;
    ctx->save_for_backward({y, scores, idx});
    return {out};
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &y = saved[0], &scores = saved[1], &idx = saved[2];
    const auto& g_out = grads[0];
    const int64_t offset = ctx->saved_data["offset"].toInt();
    const auto g_target =
        offset < 0 ? g_out.gather(1, expand_to(idx, g_out))
                   : g_out.slice_symint(1, offset, y.sym_size(1) + offset);
    return {g_out, g_target * scores.unsqueeze(-1).unsqueeze(-1),
            (g_target * y).sum({2, 3}), at::Tensor(), at::Tensor()};
  }
};

at::Tensor fuse_channels_autograd(c10::DispatchKeySet ks, const at::Tensor& x,
                                  const at::Tensor& y,
                                  const at::Tensor& scores,
                                  const at::Tensor& idx, int64_t offset) {
  if (!records_grad("fuse_channels", {&x, &y, &scores})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fuse_op().redispatch(ks & c10::after_ADInplaceOrView_keyset, x, y,
                                scores, idx, offset);
  }
  return FuseChannels::apply(x, y, scores, idx, offset)[0];
}

// conv_chain has no backward (the inference form's Conv-Block): a call that
// autograd would record is an error, any other goes straight to the device's
// kernel (without this kernel, PyTorch's boxed autograd fallback, which
// converts the argument lists on every call).
at::Tensor conv_chain_autograd(c10::DispatchKeySet ks, const at::Tensor& x,
                               at::TensorList weights,
                               at::TensorList biases, at::IntArrayRef meta,
                               bool residual, int64_t final_act,
                               const c10::optional<at::Tensor>& scale) {
  bool grad = records_grad("conv_chain", {&x, &or_undefined(scale)});
  for (const auto& t : weights) grad = records_grad("conv_chain", {&t}) || grad;
  for (const auto& t : biases) grad = records_grad("conv_chain", {&t}) || grad;
  TORCH_CHECK(!grad, "mmmod::conv_chain has no autograd (it is the "
              "inference form's Conv-Block): call it under torch.no_grad() "
              "or torch.inference_mode(), with inputs that do not require "
              "grad and have no forward-mode tangent");
  at::AutoDispatchBelowADInplaceOrView guard;
  return chain_op().redispatch(ks & c10::after_ADInplaceOrView_keyset, x,
                               weights, biases, meta, residual, final_act,
                               scale);
}

SelectOutputs select_channels_autograd(c10::DispatchKeySet ks,
                                       const at::Tensor& x,
                                       const at::Tensor& means,
                                       const at::Tensor& w1,
                                       const c10::optional<at::Tensor>& b1,
                                       const at::Tensor& w2,
                                       const c10::optional<at::Tensor>& b2,
                                       int64_t k) {
  if (!records_grad("select_channels", {&x, &means, &w1, &or_undefined(b1),
                                        &w2, &or_undefined(b2)})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return select_op().redispatch(ks & c10::after_ADInplaceOrView_keyset, x,
                                  means, w1, b1, w2, b2, k);
  }
  auto out = SelectChannels::apply(x, means, w1, b1, w2, b2, k);
  return {out[0], out[1], out[2]};
}

const char* const kInferenceTensorOutside =
    "mmmod::mod_block_ adds into x in place, and x is an inference tensor "
    "(made under torch.inference_mode()), which cannot be written outside "
    "it: run the model under torch.inference_mode(), or pass a clone";

// The inference form of a MoD block whose Conv-Block is a chain, in one call:
// the channel means, select_channels, conv_chain times the scores, and the
// add into x's target channels (ops.py's _mod_block_, the same ops). A
// CompositeImplicitAutograd kernel: eager runs the steps without Python
// between them (in a network at batch 1 the Python between the steps cost
// ~0.1 ms a block: its code and objects start cold, like the ops' data);
// torch.compile's graphs get the steps themselves (torch.export on torch
// 2.14 keeps the one call until run_decompositions()).
at::Tensor& mod_block_(at::Tensor& x, const at::Tensor& w1,
                       const c10::optional<at::Tensor>& b1,
                       const at::Tensor& w2,
                       const c10::optional<at::Tensor>& b2, int64_t k,
                       at::TensorList weights, at::TensorList biases,
                       at::IntArrayRef meta, bool residual, int64_t final_act,
                       int64_t offset) {
  check_map(x, "mod_block_", "x");
  // before anything is written: ATen's in-place ops raise after writing
  TORCH_CHECK(!x.is_inference() || c10::InferenceMode::is_enabled(),
              kInferenceTensorOutside);
  if (const auto c = x.sym_size(1).maybe_as_int())  // (traced: static C)
    TORCH_CHECK(offset < 0 || offset + k <= *c, "mmmod::mod_block_: offset=",
                offset, " + k=", k, " exceeds the ", *c, " channels of x");
  // ops.py's channel_means: a sum (in float32 for half types), a division
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto means =
      at::div(x.sum({2, 3}, /*keepdim=*/false, acc),
              c10::Scalar(x.sym_size(2) * x.sym_size(3)))
          .to(x.scalar_type());
  auto [x_k, scores, idx] = select_op().call(x, means, w1, b1, w2, b2, k);
  const auto y =
      chain_op()
          .call(x_k, weights, biases, meta, residual, final_act, scores)
          .to(x.scalar_type());
  if (offset < 0) return x.scatter_add_(1, expand_to(idx, x), y);
  return x.index_add_(
      1, at::arange(offset, offset + k, x.options().dtype(at::kLong)), y);
}

}  // namespace

TORCH_LIBRARY_IMPL(mmmod, CompositeImplicitAutograd, m) {
  m.impl("mod_block_", &mod_block_);
}

TORCH_LIBRARY_IMPL(mmmod, Autograd, m) {
  m.impl("select_channels", &select_channels_autograd);
  m.impl("fuse_channels", &fuse_channels_autograd);
  m.impl("conv_chain", &conv_chain_autograd);
}

TORCH_LIBRARY_IMPL(mmmod, CPU, m) {
  m.impl("select_channels", &select_channels_cpu);
  m.impl("fuse_channels", &fuse_channels_cpu);
  m.impl("conv_chain", &conv_chain_cpu);
}

TORCH_LIBRARY_IMPL(mmmod, CUDA, m) {
  m.impl("select_channels", &select_channels_aten);
  m.impl("fuse_channels", &fuse_channels_aten);
  m.impl("conv_chain", &conv_chain_aten);
}

// Importing mmmod._ext runs the registrations above; it has no Python API.
PyMODINIT_FUNC PyInit__ext(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ext", nullptr, -1,
                               nullptr};
  return PyModule_Create(&module);
}
