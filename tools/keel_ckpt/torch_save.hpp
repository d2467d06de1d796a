#pragma once
// What `keel-ckpt export` writes: torch.save's file format (a zip with data.pkl and one record
// per tensor), which Python's torch.load reads with its default weights_only=True.
//
// torch::pickle_save writes the same format but tags every dict with its TorchScript type
// (torch.jit._pickle.restore_type_tag); PyTorch 2.6 made weights_only=True the default of
// torch.load, which refuses that global. Plain dicts of tensors need no tag, so the pickle is
// written here without them (same LibTorch calls as pickle_save, in 1.13 and 2.x alike).
// Only dicts and tensors: typed lists would still be written through globals weights_only
// refuses (torch.jit._pickle.build_intlist...), and the test that reads the export back with
// torch.load(weights_only=True) would say so.

#include <ATen/core/ivalue.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include <cstddef>
#include <vector>

namespace keel_ckpt {

inline std::vector<char> torch_save_bytes(const torch::IValue& value) {
  std::vector<char> pickle;
  torch::jit::Pickler pickler(
      [&](const char* data, std::size_t size) { pickle.insert(pickle.end(), data, data + size); },
      /*tensor_table=*/nullptr, /*type_renamer=*/nullptr, /*memoized_class_types=*/nullptr,
      /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(value);
  pickler.stop();

  std::vector<char> file;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, std::size_t size) {
    const char* bytes = static_cast<const char*>(data);
    file.insert(file.end(), bytes, bytes + size);
    return size;
  });
  torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(), writer);
  writer.writeEndOfFile();
  return file;
}

}  // namespace keel_ckpt
