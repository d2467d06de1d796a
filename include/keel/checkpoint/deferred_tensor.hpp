#pragma once
// Deferred tensors: a loaded tensor whose bytes stay in the checkpoint until they are applied.
//
// A load parses every section and checks it before anything live changes. Parsing the large
// tensors of the model and the optimizer into staging copies would hold a second copy of the
// state (and, on a virtual machine, pay for touching that fresh memory page by page). Instead
// their parse yields a placeholder with the right dtype and shape, good for every check, whose
// storage remembers where the bytes are; once every section has passed, copy_into() reads the
// bytes straight into the live tensor, and materialize() gives a placeholder real memory where
// no live tensor exists yet. The file stays open meanwhile (ByteSource), so a checkpoint
// renamed over or deleted during the load is still read whole.

#include <keel/checkpoint/source.hpp>

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

namespace keel::ckpt {

namespace detail {
/// Where a placeholder's bytes are. Owned by the placeholder's storage (its deleter frees it).
struct DeferredBytes {
  std::shared_ptr<const ByteSource> source;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  bool swap_bytes = false;                  // written on a host of the other byte order
  alignas(16) unsigned char element[16] = {};  // the placeholder's single (zero) element
};

inline void delete_deferred(void* context) { delete static_cast<DeferredBytes*>(context); }

inline const DeferredBytes* deferred_bytes(const at::Tensor& tensor) {
  if (!tensor.defined() || !tensor.has_storage()) return nullptr;
  const c10::DataPtr& data = tensor.storage().data_ptr();
  return data.get_deleter() == &delete_deferred ? static_cast<const DeferredBytes*>(data.get_context()) : nullptr;
}

/// Reads the bytes of `from` into `to`, a contiguous CPU tensor of the same dtype and size.
inline void read_deferred(const DeferredBytes& from, const at::Tensor& to) {
  from.source->read(from.offset, to.data_ptr(), static_cast<std::size_t>(from.size));
  if (from.swap_bytes && to.element_size() > 1) {
    auto* bytes = static_cast<unsigned char*>(to.data_ptr());
    const std::size_t width = to.element_size();
    for (std::size_t i = 0; i < from.size; i += width)
      for (std::size_t a = i, b = i + width - 1; a < b; ++a, --b) std::swap(bytes[a], bytes[b]);
  }
}
}  // namespace detail

/// A placeholder for the `type` tensor of `shape` whose bytes are the `size` bytes at `offset`
/// of `source`: its dtype and sizes are right, every element reads zero until it is read.
inline at::Tensor deferred_tensor(std::shared_ptr<const ByteSource> source, std::uint64_t offset, std::uint64_t size,
                                  at::ScalarType type, at::IntArrayRef shape, bool swap_bytes) {
  auto where = std::make_unique<detail::DeferredBytes>();
  where->source = std::move(source);
  where->offset = offset;
  where->size = size;
  where->swap_bytes = swap_bytes;
  void* element = where->element;
  c10::DataPtr data(element, where.get(), &detail::delete_deferred, c10::Device(c10::kCPU));
  where.release();  // the storage owns it now
  c10::Storage storage(c10::Storage::use_byte_size_t(), c10::elementSize(type), std::move(data), /*allocator=*/nullptr,
                       /*resizable=*/false);
  const std::vector<std::int64_t> strides(shape.size(), 0);
  at::Tensor placeholder = at::empty({0}, at::TensorOptions().dtype(type));
  placeholder.set_(storage, 0, shape, strides);
  return placeholder;
}

/// Whether T (a section entry, an optimizer policy) takes placeholders and reads them itself
/// (`static constexpr bool reads_deferred_tensors = true`); anything else gets real tensors.
template <class T, class = void>
inline constexpr bool reads_deferred_tensors = false;
template <class T>
inline constexpr bool reads_deferred_tensors<T, std::void_t<decltype(T::reads_deferred_tensors)>> =
    T::reads_deferred_tensors;

/// Whether `tensor` is a placeholder whose bytes are still in a checkpoint.
inline bool is_deferred(const at::Tensor& tensor) { return detail::deferred_bytes(tensor) != nullptr; }

/// The values of `tensor`: a placeholder's bytes read into a tensor of their own (the
/// placeholder stays as it is), any other tensor itself. For tools that read one at a time.
inline at::Tensor read_values(const at::Tensor& tensor) {
  const detail::DeferredBytes* where = detail::deferred_bytes(tensor);
  if (!where) return tensor;
  at::Tensor real = at::empty(tensor.sizes(), at::TensorOptions().dtype(tensor.scalar_type()));
  detail::read_deferred(*where, real);
  return real;
}

/// Gives a placeholder memory of its own, holding its bytes from the checkpoint (every handle
/// of it sees the change). Any other tensor is left as it is.
inline void materialize(at::Tensor& tensor) {
  if (!is_deferred(tensor)) return;
  const at::Tensor real = read_values(tensor);
  at::NoGradGuard no_grad;
  tensor.set_(real);  // drops the placeholder's storage, and with it where its bytes are
}

/// Copies `saved` into the live tensor `live` of the same shape, as live.copy_(saved) does. A
/// placeholder is read from its checkpoint straight into `live`'s memory when `live` is a
/// contiguous CPU tensor of its dtype, else through one temporary tensor.
inline void copy_into(const at::Tensor& live, const at::Tensor& saved) {
  at::NoGradGuard no_grad;
  const detail::DeferredBytes* where = detail::deferred_bytes(saved);
  if (!where) {
    live.copy_(saved);
    return;
  }
  if (live.is_cpu() && live.is_contiguous() && !live.is_complex() && live.scalar_type() == saved.scalar_type() &&
      live.sizes() == saved.sizes()) {
    detail::read_deferred(*where, live);
    live.unsafeGetTensorImpl()->bump_version();  // as copy_ does: autograd sees the change
    return;
  }
  at::Tensor bytes = at::empty(saved.sizes(), at::TensorOptions().dtype(saved.scalar_type()));
  detail::read_deferred(*where, bytes);
  live.copy_(bytes);
}

}  // namespace keel::ckpt
