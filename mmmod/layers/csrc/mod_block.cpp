// CPU inference kernels of the MoD block (mmmod/layers/mod_block.py).
//
// At batch 1 a MoD block does almost no arithmetic: its cost in eager PyTorch
// is the dozen small ATen ops of the selector, top-k, gather and fusion, each
// run with cold caches between two large convolutions (~25 us each). These two
// kernels do the same work in two calls:
//
//   select_gather: channel means -> Linear -> ReLU -> Linear -> top-k ->
//                  sigmoid of the chosen logits, and the chosen channels
//                  copied out;
//   scale_add_:    out[:, dst] += y * scores, in place.
//
// Both take float32 maps in NCHW (contiguous) or NHWC (channels-last) layout
// and keep it. No autograd: MoDBlock calls them only when nothing records.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
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

  // logits of every sample, then ATen's own top-k: the same choice as
  // torch.topk in forward_plain, ties included (a dead selector gives
  // equal logits)
  auto logits = at::empty({n, c}, opts);
  float* lp = logits.data_ptr<float>();
  std::vector<float> h(hidden);
  for (int64_t s = 0; s < n; ++s) {
    linear(w1, b1, mean.data() + s * c, h.data(), /*relu=*/true);
    linear(w2, b2, h.data(), lp + s * c, /*relu=*/false);
  }
  auto [scores, index] = at::topk(logits, k, /*dim=*/1);
  scores.sigmoid_();
  const int64_t* ip = index.data_ptr<int64_t>();
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
  m.def("version_sum", &version_sum, py::arg("tensors"));
}
