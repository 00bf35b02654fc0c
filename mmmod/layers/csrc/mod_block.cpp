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
// Narrower output maps multiply patches (im2col) instead of running taps
// (measured in ResNet-MoD: taps win at 28 and 56 columns, patches at 7).
constexpr int64_t kTapMinWidth = 14;

// y[i] += a * x[i]
MOD_VECTORIZED void axpy(float* y, const float* x, float a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// The epilogue of one output plane, while it is in cache: + residual, ReLU.
MOD_VECTORIZED void finish_plane(float* y, const float* residual, bool relu,
                                 int64_t n) {
  if (residual) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] += residual[i];
  }
  if (relu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = std::max(y[i], 0.f);
  }
}

struct ConvGeometry {
  int64_t ih, iw, kh, kw, oh, ow, sy, sx, py, px, dy, dx;

  // The output columns [lo, hi) whose input column for tap column kx lies in
  // the map, and that input column's offset at ox = 0.
  void columns(int64_t kx, int64_t& lo, int64_t& hi, int64_t& x0) const {
    x0 = kx * dx - px;
    lo = std::min<int64_t>(ow, x0 >= 0 ? 0 : (-x0 + sx - 1) / sx);
    hi = std::max<int64_t>(
        lo, std::min<int64_t>(ow, x0 >= iw ? 0 : (iw - 1 - x0) / sx + 1));
  }
};

// out[oy, ox] += w * in[oy * sy + ky * dy - py, ox * sx + kx * dx - px] over
// the valid outputs, for one (output channel, input channel, tap): the direct
// convolution, for maps wide enough to vectorise along a row.
MOD_VECTORIZED void conv_tap(float* out, const float* in, float w,
                             const ConvGeometry& g, int64_t ky, int64_t kx) {
  int64_t lo, hi, x0;
  g.columns(kx, lo, hi, x0);
  for (int64_t oy = 0; oy < g.oh; ++oy) {
    const int64_t iy = oy * g.sy + ky * g.dy - g.py;
    if (iy < 0 || iy >= g.ih) continue;
    float* o = out + oy * g.ow;
    const float* r = in + iy * g.iw + x0;
    if (g.sx == 1) {
#pragma omp simd
      for (int64_t ox = lo; ox < hi; ++ox) o[ox] += w * r[ox];
    } else {
      for (int64_t ox = lo; ox < hi; ++ox) o[ox] += w * r[ox * g.sx];
    }
  }
}

// The input patches of ``channels`` NCHW planes as the rows of a matrix,
// for narrow maps, where a row of conv_tap is too short to vectorise:
// col[(i * kh + ky) * kw + kx][oy * ow + ox] =
//   in[i][oy * sy + ky * dy - py][ox * sx + kx * dx - px], 0 outside the map.
void im2col(const float* in, int64_t channels, const ConvGeometry& g,
            float* col) {
  for (int64_t i = 0; i < channels; ++i)
    for (int64_t ky = 0; ky < g.kh; ++ky)
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        int64_t lo, hi, x0;
        g.columns(kx, lo, hi, x0);
        for (int64_t oy = 0; oy < g.oh; ++oy, col += g.ow) {
          const int64_t iy = oy * g.sy + ky * g.dy - g.py;
          if (iy < 0 || iy >= g.ih) {
            std::fill_n(col, g.ow, 0.f);
            continue;
          }
          const float* r = in + (i * g.ih + iy) * g.iw + x0;
          std::fill_n(col, lo, 0.f);
          for (int64_t ox = lo; ox < hi; ++ox) col[ox] = r[ox * g.sx];
          std::fill_n(col + hi, g.ow - hi, 0.f);
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
  std::vector<int64_t> dst(k);
  for (int64_t s = 0; s < n; ++s) {
    const float* sc = sp + s * k;
    for (int64_t j = 0; j < k; ++j) {
      dst[j] = offset < 0 ? ip[s * k + j] : offset + j;
      TORCH_CHECK(0 <= dst[j] && dst[j] < c, "scale_add_: channel index ",
                  dst[j], " is not in [0, ", c, ")");
    }
    if (!nhwc) {
      for (int64_t j = 0; j < k; ++j)
        axpy(op + (s * c + dst[j]) * hw, yp + (s * k + j) * hw, sc[j], hw);
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
// (k = C // c channels): one thread, no library GEMM, one output plane at a
// time (direct taps on wide maps; on narrow ones the input patches, a 1x1
// stride-1 conv's input as is, times the weight), bias, residual and ReLU
// applied while the plane is in cache.
at::Tensor conv2d(const at::Tensor& x_any, const at::Tensor& w,
                  const c10::optional<at::Tensor>& b, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation,
                  int64_t groups, const c10::optional<at::Tensor>& residual,
                  bool relu) {
  check_map(x_any, "conv2d");
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.dim() == 4,
              "conv2d: expects a float32 (O, I / groups, kH, kW) weight");
  const bool has_res = residual && residual->defined();
  const int64_t n = x_any.size(0), ic = x_any.size(1);
  const int64_t oc = w.size(0), icg = w.size(1);
  ConvGeometry g{x_any.size(2), x_any.size(3), w.size(2), w.size(3), 0, 0,
                 stride[0], stride[1], padding[0], padding[1], dilation[0],
                 dilation[1]};
  g.oh = (g.ih + 2 * g.py - g.dy * (g.kh - 1) - 1) / g.sy + 1;
  g.ow = (g.iw + 2 * g.px - g.dx * (g.kw - 1) - 1) / g.sx + 1;
  if (n * oc * g.oh * g.ow * icg * g.kh * g.kw > kDirectConvMaxMacs) {
    auto y = at::conv2d(x_any, w, b, stride, padding, dilation, groups);
    if (has_res) y.add_(*residual);
    return relu ? y.relu_() : y;
  }
  TORCH_CHECK(ic == icg * groups && oc % groups == 0,
              "conv2d: weight of shape ", w.sizes(), " does not fit ", ic,
              " input channels in ", groups, " groups");
  TORCH_CHECK(!has_res || residual->sizes() ==
                              at::IntArrayRef({n, oc, g.oh, g.ow}),
              "conv2d: residual of shape ", residual->sizes(),
              " does not match the output ",
              at::IntArrayRef({n, oc, g.oh, g.ow}));
  const auto format = channels_last(x_any) ? at::MemoryFormat::ChannelsLast
                                           : at::MemoryFormat::Contiguous;
  // the loops run on NCHW planes (a tiny map: converting is cheap)
  const at::Tensor x = x_any.contiguous();
  const at::Tensor wc = w.contiguous();
  const at::Tensor rc = has_res ? residual->contiguous() : at::Tensor();
  const bool has_bias = b && b->defined();
  const at::Tensor bc = has_bias ? b->contiguous() : at::Tensor();
  auto y = at::empty({n, oc, g.oh, g.ow}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = wc.data_ptr<float>();
  const float* bp = has_bias ? bc.data_ptr<float>() : nullptr;
  const float* rp = has_res ? rc.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();

  const int64_t ocg = oc / groups, ohw = g.oh * g.ow;
  const int64_t rows = icg * g.kh * g.kw;  // patch length
  const bool pointwise = g.kh == 1 && g.kw == 1 && g.sy == 1 && g.sx == 1 &&
                         g.py == 0 && g.px == 0;
  const bool patches = pointwise || g.ow < kTapMinWidth;
  std::vector<float> col(patches && !pointwise ? rows * ohw : 0);
  for (int64_t s = 0; s < n; ++s)
    for (int64_t grp = 0; grp < groups; ++grp) {
      const float* in = xp + (s * ic + grp * icg) * g.ih * g.iw;
      const float* matrix = in;  // (rows, ohw) when patches
      if (patches && !pointwise) {
        im2col(in, icg, g, col.data());
        matrix = col.data();
      }
      for (int64_t o = grp * ocg; o < (grp + 1) * ocg; ++o) {
        float* out = yp + (s * oc + o) * ohw;
        std::fill_n(out, ohw, bp ? bp[o] : 0.f);
        const float* wo = wp + o * rows;
        for (int64_t i = 0, r = 0; i < icg; ++i)
          for (int64_t ky = 0; ky < g.kh; ++ky)
            for (int64_t kx = 0; kx < g.kw; ++kx, ++r) {
              if (patches)
                axpy(out, matrix + r * ohw, wo[r], ohw);
              else
                conv_tap(out, in + i * g.ih * g.iw, wo[r], g, ky, kx);
            }
        finish_plane(out, rp ? rp + (s * oc + o) * ohw : nullptr, relu, ohw);
      }
    }
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
