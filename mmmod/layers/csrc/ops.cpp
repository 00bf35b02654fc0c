// The CPU kernels of the MoD block's ops, registered with PyTorch's
// dispatcher (TORCH_LIBRARY_IMPL below). The schemas and the rest of each op
// (composite implementation for other devices, fake tensor rule, autograd,
// ONNX translation) are in mmmod/layers/ops.py, which imports this module.
//
//   select_channels: channel means -> Linear -> ReLU -> Linear -> top-k of
//                    the logits -> sigmoid, and the chosen channels copied
//                    out. The selector and top-k are the very ATen ops the
//                    composite calls, so the choice is always torch.topk's;
//                    the kernel saves the Python calls and the gather's
//                    expanded index.
//   fuse_channels:   a new map: x, with y * scores added to k of its
//                    channels (one copy of x, then the k channels).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
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
    at::parallel_for(0, n * hw, kPlaneGrain / k + 1,
                     [&](int64_t p0, int64_t p1) {
                       for (int64_t p = p0; p < p1; ++p) {
                         const int64_t* sel = idx + p / hw * k;
                         const T* px = xp + p * c;
                         T* po = op + p * k;
                         for (int64_t j = 0; j < k; ++j) po[j] = px[sel[j]];
                       }
                     });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_channels_cpu(
    const at::Tensor& x_any, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
    const c10::optional<at::Tensor>& b2, int64_t k) {
  check_map(x_any, "select_channels", "x");
  TORCH_CHECK(1 <= k && k <= x_any.size(1), "mmmod::select_channels: k=", k,
              " is not in [1, ", x_any.size(1), "]");
  // the composite's ops in its order (ops.py: _select_channels_composite)
  auto hidden = at::linear(x_any.mean({2, 3}), w1, b1).relu();
  auto top = at::topk(at::linear(hidden, w2, b2), k, /*dim=*/1);
  auto scores = std::get<0>(top).sigmoid();
  auto idx = std::get<1>(top).contiguous();
  const auto format = layout_of(x_any);
  const at::Tensor x = x_any.contiguous(format);
  auto out = at::empty({x.size(0), k, x.size(2), x.size(3)},
                       x.options().memory_format(format));
  AT_DISPATCH_ALL_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "select_channels",
      [&] { copy_channels<scalar_t>(x, idx.data_ptr<int64_t>(), out); });
  return {out, scores, idx};
}

// out = x, then out[s, dst] += y[s, j] * scores[s, j] for the k
// target channels dst of each sample.
template <typename T>
void fuse_into(const at::Tensor& x, const at::Tensor& y, const T* sp,
               const std::vector<int64_t>& dst, at::Tensor& out) {
  const int64_t n = x.size(0), c = x.size(1), k = y.size(1);
  const int64_t hw = x.size(2) * x.size(3);
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  T* op = out.data_ptr<T>();
  // the copy of x is the kernel's main cost: on every thread, as clone()
  at::parallel_for(0, x.numel(), kPlaneGrain, [&](int64_t i0, int64_t i1) {
    std::copy(xp + i0, xp + i1, op + i0);
  });
  if (layout_of(x) == at::MemoryFormat::Contiguous) {
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

at::Tensor fuse_channels_cpu(const at::Tensor& x_any, const at::Tensor& y_any,
                             const at::Tensor& scores_any,
                             const at::Tensor& idx_any, int64_t offset) {
  check_map(x_any, "fuse_channels", "x");
  check_map(y_any, "fuse_channels", "y");
  const int64_t n = x_any.size(0), c = x_any.size(1), k = y_any.size(1);
  TORCH_CHECK(y_any.size(0) == n && y_any.size(2) == x_any.size(2) &&
                  y_any.size(3) == x_any.size(3) && k <= c,
              "mmmod::fuse_channels: y of shape ", y_any.sizes(),
              " does not fit x of shape ", x_any.sizes());
  TORCH_CHECK(y_any.scalar_type() == x_any.scalar_type() &&
                  scores_any.scalar_type() == x_any.scalar_type(),
              "mmmod::fuse_channels: x, y and scores must have one dtype, "
              "got ", x_any.scalar_type(), ", ", y_any.scalar_type(), ", ",
              scores_any.scalar_type());
  TORCH_CHECK(scores_any.dim() == 2 && scores_any.size(0) == n &&
                  scores_any.size(1) == k,
              "mmmod::fuse_channels: scores must have shape (", n, ", ", k,
              "), got ", scores_any.sizes());
  TORCH_CHECK(idx_any.scalar_type() == at::kLong && idx_any.dim() == 2 &&
                  idx_any.size(0) == n && idx_any.size(1) == k,
              "mmmod::fuse_channels: idx must be int64 of shape (", n, ", ",
              k, "), got ", idx_any.scalar_type(), " ", idx_any.sizes());
  TORCH_CHECK(offset < 0 || offset + k <= c, "mmmod::fuse_channels: offset=",
              offset, " + k=", k, " exceeds the ", c, " channels of x");
  const auto idx = idx_any.contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  std::vector<int64_t> dst(n * k);
  for (int64_t i = 0; i < n * k; ++i) {
    dst[i] = offset < 0 ? ip[i] : offset + i % k;
    TORCH_CHECK(0 <= dst[i] && dst[i] < c, "mmmod::fuse_channels: channel ",
                "index ", dst[i], " is not in [0, ", c, ")");
  }
  const auto format = layout_of(x_any);
  const at::Tensor x = x_any.contiguous(format);
  const at::Tensor y = y_any.contiguous(format);
  const at::Tensor scores = scores_any.contiguous();
  auto out = at::empty_like(x, x.options().memory_format(format));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fuse_channels", [&] {
        fuse_into<scalar_t>(x, y, scores.data_ptr<scalar_t>(), dst, out);
      });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mmmod, CPU, m) {
  m.impl("select_channels", &select_channels_cpu);
  m.impl("fuse_channels", &fuse_channels_cpu);
}

// Importing mmmod._ext runs the registrations above; it has no Python API.
PyMODINIT_FUNC PyInit__ext(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ext", nullptr, -1,
                               nullptr};
  return PyModule_Create(&module);
}
