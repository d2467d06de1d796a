#pragma once
// The gradients of a data-parallel step, all-reduced in buckets. The trainable parameters are
// laid out in buckets of about `bucket_bytes` each, one dtype per bucket, in the reverse order
// of the parameters (roughly the order in which backward produces their gradients), as PyTorch's
// DistributedDataParallel does. With `overlap`, a hook on each parameter copies its gradient into
// its bucket during the backward pass of a window's last micro-batch, and a bucket's all-reduce
// starts (in Gloo's threads, or on NCCL's stream) as soon as its last gradient is there, while
// backward goes on with the layers below; without, every bucket is filled and all-reduced after
// backward. The buckets start in the same order on every rank (bucket i only after bucket i-1),
// whenever each is ready, so the collectives match; a bucket with a gradient that never comes (a
// parameter unused in this step) starts after backward. Either way each element is the same
// sum: overlap changes when it is computed, not what.

#include <keel/distributed/process_group.hpp>
#include <keel/error.hpp>

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace keel::dist {

class GradientBuckets {
 public:
  /// Lays out `params` (the trainable ones, in the model's order) in buckets of at least one
  /// parameter and, past the first, of at most about `bucket_bytes` bytes.
  GradientBuckets(std::vector<at::Tensor> params, std::int64_t bucket_bytes) : state_(std::make_shared<State>()) {
    State& s = *state_;
    s.params = std::move(params);
    s.bucket_of.resize(s.params.size());
    s.offset_of.resize(s.params.size());
    s.arrived.assign(s.params.size(), false);
    std::vector<std::int64_t> open(static_cast<std::size_t>(at::ScalarType::NumOptions), -1);  // per dtype
    std::vector<std::int64_t> bytes(open.size(), 0);
    for (std::size_t k = s.params.size(); k-- > 0;) {
      const at::Tensor& p = s.params[k];
      const auto dtype = static_cast<std::size_t>(p.scalar_type());
      const std::int64_t size = p.numel() * static_cast<std::int64_t>(p.element_size());
      if (open[dtype] < 0 || (bytes[dtype] > 0 && bytes[dtype] + size > bucket_bytes)) {
        open[dtype] = static_cast<std::int64_t>(s.buckets.size());
        bytes[dtype] = 0;
        s.buckets.emplace_back();
        s.buckets.back().dtype = p.scalar_type();
      }
      Bucket& bucket = s.buckets[static_cast<std::size_t>(open[dtype])];
      s.bucket_of[k] = static_cast<std::size_t>(open[dtype]);
      s.offset_of[k] = bucket.elements;
      bucket.members.push_back(k);
      bucket.elements += p.numel();
      bytes[dtype] += size;
    }
    for (auto& bucket : s.buckets)  // (on the parameters' device: NCCL's buckets are on the GPU)
      bucket.values = torch::zeros({bucket.elements}, s.params[bucket.members.front()].options().dtype(bucket.dtype));
  }
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;
  ~GradientBuckets() {
    for (std::size_t k = 0; k < hooks_.size(); ++k) state_->params[k].remove_hook(hooks_[k]);
  }

  std::size_t count() const noexcept { return state_->buckets.size(); }

  /// Registers the hooks that start buckets during backward (once).
  void overlap_with_backward(ProcessGroup& group) {
    if (!hooks_.empty()) return;
    std::weak_ptr<State> weak = state_;
    ProcessGroup* g = &group;
    for (std::size_t k = 0; k < state_->params.size(); ++k)
      hooks_.push_back(state_->params[k].register_hook([weak, g, k](const at::Tensor& grad) {
        if (auto s = weak.lock(); s && s->armed) s->arrive(*g, k, grad);
      }));
  }

  /// Before the backward pass of a window's last micro-batch: the hooks take its gradients.
  void arm() {
    state_->reset();
    state_->armed = true;
  }

  /// After backward: fills what the hooks did not (every gradient, without overlap; a parameter
  /// without one this step counts as zeros) and starts the remaining buckets, in order.
  void start_rest(ProcessGroup& group) {
    State& s = *state_;
    if (!s.armed) s.reset();  // (nothing came during backward)
    s.armed = false;
    torch::NoGradGuard no_grad;
    for (std::size_t k = 0; k < s.params.size(); ++k)
      if (!s.arrived[k]) {
        const at::Tensor& grad = s.params[k].grad();
        check_dense(grad);
        at::Tensor slot = s.slot(k);
        if (grad.defined()) slot.copy_(grad.reshape({-1}));
        else slot.zero_();
        s.arrived[k] = true;
      }
    for (auto& bucket : s.buckets) bucket.ready = bucket.members.size();
    s.start_ready(group);
  }

  /// Waits for every bucket and gives each parameter that has a gradient on some rank
  /// (`has_gradient[k]`) the ranks' mean; the others keep none.
  void finish(ProcessGroup& group, const std::vector<bool>& has_gradient, double world) {
    State& s = *state_;
    torch::NoGradGuard no_grad;
    for (auto& bucket : s.buckets) {
      group.finish(bucket.work);
      bucket.work = ProcessGroup::Work();
      bucket.values.div_(world);
    }
    for (std::size_t k = 0; k < s.params.size(); ++k) {
      if (!has_gradient[k]) continue;
      at::Tensor p = s.params[k];
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      p.mutable_grad().copy_(s.slot(k).view(p.sizes()));
    }
    s.reset();
  }

  static void check_dense(const at::Tensor& grad) {
    if (grad.defined() && grad.is_sparse())
      throw ConfigError("keel: keel::DataParallel averages dense gradients; a parameter has a sparse one "
                        "(an Embedding with sparse=true?): make it dense");
  }

 private:
  struct Bucket {
    at::ScalarType dtype = at::kFloat;
    std::vector<std::size_t> members;  // parameter indices, in the order laid out
    std::int64_t elements = 0;
    at::Tensor values;
    std::size_t ready = 0;  // members whose gradient is in `values` this step
    ProcessGroup::Work work;
  };
  // What the hooks share with the object (held weakly by them: a hook outliving it does nothing).
  struct State {
    std::vector<at::Tensor> params;
    std::vector<std::size_t> bucket_of;
    std::vector<std::int64_t> offset_of;  // in its bucket's values
    std::vector<bool> arrived;
    std::vector<Bucket> buckets;
    std::size_t next = 0;  // the next bucket to start
    bool armed = false;

    // Ready for the next step (also after one that an exception interrupted).
    void reset() {
      armed = false;
      next = 0;
      arrived.assign(params.size(), false);
      for (auto& bucket : buckets) {
        bucket.ready = 0;
        bucket.work = ProcessGroup::Work();
      }
    }
    at::Tensor slot(std::size_t k) { return buckets[bucket_of[k]].values.narrow(0, offset_of[k], params[k].numel()); }
    // A hook: the parameter's gradient this step is what it holds plus `grad` (what autograd is
    // about to add to it: the same sum, bit for bit).
    void arrive(ProcessGroup& group, std::size_t k, const at::Tensor& grad) {
      if (arrived[k]) return;
      check_dense(grad);
      torch::NoGradGuard no_grad;
      at::Tensor slot = this->slot(k);
      const at::Tensor& held = params[k].grad();
      if (held.defined()) at::add_out(slot, held.reshape({-1}), grad.reshape({-1}));
      else slot.copy_(grad.reshape({-1}));
      arrived[k] = true;
      ++buckets[bucket_of[k]].ready;
      start_ready(group);
    }
    // Starts the buckets that are ready, in order, up to the first that is not.
    void start_ready(ProcessGroup& group) {
      while (next < buckets.size() && buckets[next].ready == buckets[next].members.size()) {
        buckets[next].work = group.start_all_reduce_sum(buckets[next].values);
        ++next;
      }
    }
  };

  std::shared_ptr<State> state_;
  std::vector<unsigned> hooks_;  // one per parameter, when overlapping
};

}  // namespace keel::dist
