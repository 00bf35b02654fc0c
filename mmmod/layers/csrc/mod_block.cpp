// CPU inference kernels of the MoD block (mmmod/layers/mod_block.py).
//
// At batch 1 a MoD block does almost no arithmetic: its cost in eager PyTorch
// is the twenty-odd small ATen ops of the selector, top-k, gather, Conv-Block
// and fusion, each run with cold caches between two large convolutions
// (~20-30 us each, and more for a GEMM that wakes a second thread). These
// kernels do the same work in a few calls:
//
//   select_gather: channel means -> Linear -> ReLU -> Linear -> top-k ->
//                  sigmoid of the chosen logits, and the chosen channels
//                  copied out;
//   conv2d:        the Conv-Block's convolutions (BN folded), with the ReLU
//                  and residual add that follow them, as direct loops when
//                  the work is small (ATen's conv2d otherwise);
//   scale_add_:    out[:, dst] += y * scores, in place.
//
// They take float32 maps in NCHW (contiguous) or NHWC (channels-last) layout
// and keep it. No autograd: MoDBlock calls them only when nothing records.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace {

// SIMD reductions, compiled twice (AVX2 + FMA, and any x86-64) and chosen at
// load time: the selector's matrices make these loops the kernel's main cost.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOD_VECTORIZED __attribute__((target_clones("arch=haswell", "default")))
#else
#define MOD_VECTORIZED
#endif

MOD_VECTORIZED float sum_of(const float* p, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += p[i];
  return s;
}

MOD_VECTORIZED float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// out[r] = act(w[r, :] . v + b[r]) for every row r of a (rows, cols) matrix.
void linear(const at::Tensor& w, const c10::optional<at::Tensor>& b,
            const float* v, float* out, bool relu) {
  const int64_t rows = w.size(0), cols = w.size(1);
  const float* wp = w.data_ptr<float>();
  const float* bp = (b && b->defined()) ? b->data_ptr<float>() : nullptr;
  // a worker thread pays off only for the larger matrices (stage 3 and 4)
  const int64_t grain = std::max<int64_t>(1, 65536 / cols);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float z = dot(wp + r * cols, v, cols) + (bp ? bp[r] : 0.f);
      out[r] = relu ? std::max(z, 0.f) : z;
    }
  });
}

bool channels_last(const at::Tensor& t) {
  return !t.is_contiguous() &&
         t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

void check_map(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat &&
                  t.dim() == 4,
              name, ": expects a float32 CPU tensor of shape (N, C, H, W)");
  TORCH_CHECK(t.is_contiguous() ||
                  t.is_contiguous(at::MemoryFormat::ChannelsLast),
              name, ": expects a contiguous or channels-last tensor");
}

void check_weight(const at::Tensor& w, int64_t rows, int64_t cols,
                  const c10::optional<at::Tensor>& b, const char* name) {
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() &&
                  w.dim() == 2 && w.size(0) == rows && w.size(1) == cols,
              "select_gather: ", name, " must be a contiguous float32 (",
              rows, ", ", cols, ") matrix");
  TORCH_CHECK(!(b && b->defined()) ||
                  (b->scalar_type() == at::kFloat && b->is_contiguous() &&
                   b->numel() == rows),
              "select_gather: the bias of ", name, " must have ", rows,
              " float32 values");
}

// Above this many multiply-adds a convolution goes to ATen (oneDNN / BLAS):
// direct loops win only while call overhead dominates.
constexpr int64_t kDirectConvMaxMacs = 1 << 20;

// out[oy, ox] += w * in[oy * sy + ky_off, ox * sx + kx_off] over the valid
// output range, for one (output channel, input channel, tap).
MOD_VECTORIZED void conv_tap(float* out, const float* in, float w,
                             int64_t oh, int64_t ow, int64_t ih, int64_t iw,
                             int64_t sy, int64_t sx, int64_t y0, int64_t x0) {
  // valid ox: 0 <= x0 + ox * sx < iw
  const int64_t ox_lo = x0 >= 0 ? 0 : (-x0 + sx - 1) / sx;
  const int64_t ox_hi = std::min<int64_t>(ow, x0 >= iw ? 0 : (iw - 1 - x0) / sx + 1);
  for (int64_t oy = 0; oy < oh; ++oy) {
    const int64_t iy = y0 + oy * sy;
    if (iy < 0 || iy >= ih) continue;
    float* o = out + oy * ow;
    const float* r = in + iy * iw + x0;
    if (sx == 1) {
#pragma omp simd
      for (int64_t ox = ox_lo; ox < ox_hi; ++ox) o[ox] += w * r[ox];
    } else {
      for (int64_t ox = ox_lo; ox < ox_hi; ++ox) o[ox] += w * r[ox * sx];
    }
  }
}

}  // namespace

// x (N, C, H, W); w1 (hidden, C), b1; w2 (C, hidden), b2.
// Returns the k chosen channels (N, k, H, W) in x's layout, the sigmoid
// scores (N, k) and the channel indices (N, k), best first, as
// torch.topk(logits, k) orders them.
std::vector<at::Tensor> select_gather(const at::Tensor& x,
                                      const at::Tensor& w1,
                                      const c10::optional<at::Tensor>& b1,
                                      const at::Tensor& w2,
                                      const c10::optional<at::Tensor>& b2,
                                      int64_t k) {
  check_map(x, "select_gather");
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  const int64_t hidden = w1.size(0);
  check_weight(w1, hidden, c, b1, "fc1");
  check_weight(w2, c, hidden, b2, "fc2");
  TORCH_CHECK(1 <= k && k <= c, "select_gather: k=", k, " is not in [1, ",
              c, "]");
  const bool nhwc = channels_last(x);
  const float* xp = x.data_ptr<float>();

  // channel means, (N, C)
  std::vector<float> mean(n * c, 0.f);
  if (!nhwc) {
    at::parallel_for(0, n * c, std::max<int64_t>(1, 32768 / hw),
                     [&](int64_t i0, int64_t i1) {
                       for (int64_t i = i0; i < i1; ++i)
                         mean[i] = sum_of(xp + i * hw, hw) / hw;
                     });
  } else {
    for (int64_t s = 0; s < n; ++s) {
      float* m = mean.data() + s * c;
      for (int64_t p = 0; p < hw; ++p) {
        const float* px = xp + (s * hw + p) * c;
        for (int64_t ch = 0; ch < c; ++ch) m[ch] += px[ch];
      }
      for (int64_t ch = 0; ch < c; ++ch) m[ch] /= hw;
    }
  }

  auto opts = x.options();
  auto out = at::empty({n, k, x.size(2), x.size(3)},
                       opts.memory_format(nhwc ? at::MemoryFormat::ChannelsLast
                                               : at::MemoryFormat::Contiguous));
  float* op = out.data_ptr<float>();

  auto logits = at::empty({n, c}, opts);
  auto scores = at::empty({n, k}, opts);
  auto index = at::empty({n, k}, opts.dtype(at::kLong));
  float* lp = logits.data_ptr<float>();
  float* sp = scores.data_ptr<float>();
  int64_t* ip = index.data_ptr<int64_t>();
  std::vector<float> h(hidden);
  std::vector<int64_t> order(c);
  bool distinct = true;
  for (int64_t s = 0; s < n && distinct; ++s) {
    const float* l = lp + s * c;
    linear(w1, b1, mean.data() + s * c, h.data(), /*relu=*/true);
    linear(w2, b2, h.data(), lp + s * c, /*relu=*/false);
    // The k largest logits, largest first. With distinct values (the top
    // k + 1 all different, no NaN) this is the one answer torch.topk can
    // give; otherwise its tie order is its own, so ask it (below).
    const int64_t m = std::min(k + 1, c);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + m, order.end(),
                      [l](int64_t a, int64_t b) { return l[a] > l[b]; });
    for (int64_t j = 0; j < m; ++j)
      distinct = distinct && !std::isnan(l[order[j]]) &&
                 (j == 0 || l[order[j]] < l[order[j - 1]]);
    for (int64_t j = 0; j < k; ++j) {
      ip[s * k + j] = order[j];
      sp[s * k + j] = 1.f / (1.f + std::exp(-l[order[j]]));
    }
  }
  if (!distinct) {  // ties (e.g. a selector whose ReLU outputs all zero)
    for (int64_t s = 0; s < n; ++s) {
      linear(w1, b1, mean.data() + s * c, h.data(), /*relu=*/true);
      linear(w2, b2, h.data(), lp + s * c, /*relu=*/false);
    }
    auto top = at::topk(logits, k, /*dim=*/1);
    index.copy_(std::get<1>(top));
    scores.copy_(std::get<0>(top)).sigmoid_();
  }
  for (int64_t s = 0; s < n; ++s) {
    const int64_t* sel = ip + s * k;
    if (!nhwc) {
      for (int64_t j = 0; j < k; ++j)
        std::copy_n(xp + (s * c + sel[j]) * hw, hw, op + (s * k + j) * hw);
    } else {
      for (int64_t p = 0; p < hw; ++p) {
        const float* px = xp + (s * hw + p) * c;
        float* po = op + (s * hw + p) * k;
        for (int64_t j = 0; j < k; ++j) po[j] = px[sel[j]];
      }
    }
  }
  return {out, scores, index};
}

// out[s, dst(j)] += y[s, j] * scores[s, j], dst(j) = offset + j, or
// index[s, j] when offset < 0. Returns out.
at::Tensor scale_add_(at::Tensor out, const at::Tensor& y_any,
                      const at::Tensor& scores, const at::Tensor& index,
                      int64_t offset) {
  check_map(out, "scale_add_");
  const bool nhwc = channels_last(out);
  // y in out's layout (a no-op for the blocks of the mmmod backbones)
  const at::Tensor y = y_any.contiguous(
      nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  check_map(y, "scale_add_");
  const int64_t n = out.size(0), c = out.size(1), k = y.size(1);
  const int64_t hw = out.size(2) * out.size(3);
  TORCH_CHECK(y.size(0) == n && y.size(2) == out.size(2) &&
                  y.size(3) == out.size(3) && k <= c,
              "scale_add_: y of shape ", y.sizes(), " does not fit out ",
              out.sizes());
  TORCH_CHECK(scores.is_contiguous() && scores.scalar_type() == at::kFloat &&
                  scores.numel() == n * k,
              "scale_add_: scores must be (N, k) float32");
  TORCH_CHECK(index.is_contiguous() && index.scalar_type() == at::kLong &&
                  index.numel() == n * k,
              "scale_add_: index must be (N, k) int64");
  TORCH_CHECK(offset < 0 || offset + k <= c, "scale_add_: offset ", offset,
              " + k=", k, " exceeds C=", c);
  float* op = out.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  const float* sp = scores.data_ptr<float>();
  const int64_t* ip = index.data_ptr<int64_t>();
  for (int64_t s = 0; s < n; ++s) {
    const float* sc = sp + s * k;
    std::vector<int64_t> dst(k);
    for (int64_t j = 0; j < k; ++j)
      dst[j] = offset < 0 ? ip[s * k + j] : offset + j;
    if (!nhwc) {
      for (int64_t j = 0; j < k; ++j) {
        float* po = op + (s * c + dst[j]) * hw;
        const float* py = yp + (s * k + j) * hw;
        const float a = sc[j];
        for (int64_t p = 0; p < hw; ++p) po[p] += py[p] * a;
      }
    } else {
      for (int64_t p = 0; p < hw; ++p) {
        float* po = op + (s * hw + p) * c;
        const float* py = yp + (s * hw + p) * k;
        for (int64_t j = 0; j < k; ++j) po[dst[j]] += py[j] * sc[j];
      }
    }
  }
  return out;
}

// relu(conv2d(x, w, b) + residual), residual and relu optional, in x's
// memory layout. The convolutions of a MoD block's Conv-Block are small
// (k = C // c channels): direct loops, one thread, no GEMM.
at::Tensor conv2d(const at::Tensor& x_any, const at::Tensor& w,
                  const c10::optional<at::Tensor>& b, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation,
                  int64_t groups, const c10::optional<at::Tensor>& residual,
                  bool relu) {
  check_map(x_any, "conv2d");
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.dim() == 4,
              "conv2d: expects a float32 (O, I / groups, kH, kW) weight");
  const bool has_res = residual && residual->defined();
  const int64_t n = x_any.size(0), ic = x_any.size(1), ih = x_any.size(2),
                iw = x_any.size(3);
  const int64_t oc = w.size(0), icg = w.size(1), kh = w.size(2),
                kw = w.size(3);
  const int64_t oh = (ih + 2 * padding[0] - dilation[0] * (kh - 1) - 1) /
                         stride[0] + 1;
  const int64_t ow = (iw + 2 * padding[1] - dilation[1] * (kw - 1) - 1) /
                         stride[1] + 1;
  if (n * oc * oh * ow * icg * kh * kw > kDirectConvMaxMacs) {
    auto y = at::conv2d(x_any, w, b, stride, padding, dilation, groups);
    if (has_res) y.add_(*residual);
    return relu ? y.relu_() : y;
  }
  TORCH_CHECK(ic == icg * groups && oc % groups == 0,
              "conv2d: weight of shape ", w.sizes(), " does not fit ", ic,
              " input channels in ", groups, " groups");
  const auto format = channels_last(x_any) ? at::MemoryFormat::ChannelsLast
                                           : at::MemoryFormat::Contiguous;
  // the loops run on NCHW planes (a tiny map: converting is cheap)
  const at::Tensor x = x_any.contiguous();
  const at::Tensor wc = w.contiguous();
  auto y = at::empty({n, oc, oh, ow}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = wc.data_ptr<float>();
  const bool has_bias = b && b->defined();
  const at::Tensor bc = has_bias ? b->contiguous() : at::Tensor();
  const float* bp = has_bias ? bc.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t ocg = oc / groups, ohw = oh * ow;
  for (int64_t s = 0; s < n; ++s) {
    for (int64_t o = 0; o < oc; ++o) {
      float* out = yp + (s * oc + o) * ohw;
      std::fill_n(out, ohw, bp ? bp[o] : 0.f);
      const int64_t g = o / ocg;
      for (int64_t i = 0; i < icg; ++i) {
        const float* in = xp + (s * ic + g * icg + i) * ih * iw;
        for (int64_t ky = 0; ky < kh; ++ky)
          for (int64_t kx = 0; kx < kw; ++kx)
            conv_tap(out, in, wp[((o * icg + i) * kh + ky) * kw + kx], oh, ow,
                     ih, iw, stride[0], stride[1],
                     ky * dilation[0] - padding[0],
                     kx * dilation[1] - padding[1]);
      }
    }
  }
  if (has_res) {
    TORCH_CHECK(residual->sizes() == y.sizes(), "conv2d: residual of shape ",
                residual->sizes(), " does not match the output ", y.sizes());
    y.add_(*residual);
  }
  if (relu) y.relu_();
  return format == at::MemoryFormat::ChannelsLast ? y.contiguous(format) : y;
}

// The sum of the tensors' version counters, which grow with every in-place
// write: MoDBlock's check that its BN-folded copy is still current.
int64_t version_sum(const std::vector<at::Tensor>& tensors) {
  int64_t sum = 0;
  for (const auto& t : tensors) sum += t._version();
  return sum;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU inference kernels of mmmod's MoD block";
  m.def("select_gather", &select_gather, py::arg("x"), py::arg("w1"),
        py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("k"));
  m.def("scale_add_", &scale_add_, py::arg("out"), py::arg("y"),
        py::arg("scores"), py::arg("index"), py::arg("offset"));
  m.def("conv2d", &conv2d, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("groups"), py::arg("residual"), py::arg("relu"));
  m.def("version_sum", &version_sum, py::arg("tensors"));
}
