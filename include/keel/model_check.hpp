#pragma once
// The model's part of the guarantee. A torch::nn::Module's parameters and buffers are saved by
// name; anything else the model holds (a call counter, a running statistic in a double, a
// tensor that was never registered) would be lost. So a model that adds data members to
// torch::nn::Module declares them, with BOOST_HANA_DEFINE_STRUCT (or BOOST_HANA_ADAPT_STRUCT):
//
//   submodule holders and tensors   saved as the parameters and buffers they must be registered
//                                   as (checked when the Trainer is constructed);
//   every other member              saved by value in the section "model.members".
//
// The declaration is measured like any component's (keel/layout.hpp), after torch::nn::Module's
// own data. LibTorch's own modules (torch::nn::Linear, Sequential...) keep all their state in
// parameters and buffers and need no declaration. A module that cannot be changed is accepted
// only through the opt-out written at the Trainer, keel::model<M, keel::parameters_only>,
// which the checkpoint's fingerprint records ("model.state") and keel-ckpt info shows.

#include <keel/layout.hpp>
#include <keel/reflect.hpp>
#include <keel/state_check.hpp>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace keel {

/// The opt-out for a model whose class cannot be changed: keel::model<M, keel::parameters_only>
/// saves its parameters and buffers and nothing else of it.
struct parameters_only {};

namespace detail {
template <class T>
constexpr std::string_view function_signature() {
  return __PRETTY_FUNCTION__;  // "... [with T = torch::nn::LinearImpl ...]" (g++), "[T = ...]" (clang++)
}
/// A module class of LibTorch itself: all its state is in its parameters and buffers.
template <class T>
constexpr bool is_libtorch_module() {
  constexpr std::string_view signature = function_signature<T>();
  constexpr std::size_t at = signature.find("T = ");
  return at != std::string_view::npos && signature.substr(at + 4, 11) == "torch::nn::";
}

template <class T>
struct is_module_pointer : std::false_type {};
template <class M>
struct is_module_pointer<std::shared_ptr<M>> : std::is_base_of<torch::nn::Module, M> {};

/// A member saved as parameters, buffers or a submodule's state, not by value.
template <class M>
inline constexpr bool saved_as_module_state = std::is_same_v<M, torch::Tensor> ||
                                              std::is_base_of_v<torch::detail::ModuleHolderIndicator, M> ||
                                              is_module_pointer<M>::value;
}  // namespace detail

/// Keep<M> for the "model.members" section: the members saved by value.
template <class M>
struct saved_by_value : std::bool_constant<!detail::saved_as_module_state<M>> {};

namespace detail {
template <class Model, class Format, class... A>
constexpr bool members_serializable(layout::type_list<A...>) {
  return ((saved_as_module_state<typename layout::accessor_traits<A>::member_type> ||
           cereal_serializable<typename layout::accessor_traits<A>::member_type, Format>) &&
          ... && true);
}

template <class T>
struct submodule_class {
  using type = void;  // not a submodule
};
template <class M>
struct submodule_class<std::shared_ptr<M>> {
  using type = std::conditional_t<std::is_base_of_v<torch::nn::Module, M>, M, void>;
};

template <class M, class = void>
struct holder_class {
  using type = typename submodule_class<M>::type;
};
template <class M>
struct holder_class<M, std::enable_if_t<std::is_base_of_v<torch::detail::ModuleHolderIndicator, M>>> {
  using type = typename M::ContainedType;
};

template <class... A>
constexpr bool has_plain_members(layout::type_list<A...>) {
  return (!saved_as_module_state<typename layout::accessor_traits<A>::member_type> || ... || false);
}

/// torch::nn::Module is a virtual base of M (LibTorch 1.13's Cloneable derives virtually).
template <class M, class = void>
struct module_is_virtual_base : std::true_type {};
template <class M>
struct module_is_virtual_base<M, std::void_t<decltype(static_cast<M*>(std::declval<torch::nn::Module*>()))>>
    : std::false_type {};
}  // namespace detail

/// True when the model keeps state beyond torch::nn::Module's data, declared or not.
template <class Module>
constexpr bool model_adds_data() {
  return !detail::is_libtorch_module<Module>() && !layout::adds_no_data<Module, torch::nn::Module>();
}

template <class Module, class Format, bool TopLevel>
constexpr bool check_module_state();

namespace detail {
template <class Member, class Format>
constexpr bool check_member_module() {
  using Submodule = typename holder_class<Member>::type;
  if constexpr (std::is_void_v<Submodule>) {
    return true;  // not a submodule
  } else {
    return check_module_state<Submodule, Format, false>();
  }
}
template <class Format, class... A>
constexpr bool check_submodules(layout::type_list<A...>) {
  return (check_member_module<typename layout::accessor_traits<A>::member_type, Format>() && ... && true);
}
}  // namespace detail

/// The rules for a module of the user's (the model, or a submodule it declares).
template <class Module, class Format, bool TopLevel>
constexpr bool check_module_state() {
  static_assert(std::is_base_of_v<torch::nn::Module, Module>,
                "keel::model<M>: M must derive from torch::nn::Module (or be the holder that TORCH_MODULE(M) "
                "declares).");
  if constexpr (!model_adds_data<Module>()) {
    return true;
  } else {
    static_assert(!detail::module_is_virtual_base<Module>::value,
                  "keel [model state declared]: this module derives from torch::nn::Module virtually (LibTorch "
                  "1.13's torch::nn::Cloneable does), and keel cannot measure such a class against its declaration. "
                  "Derive from torch::nn::Module (Cloneable is not virtual in LibTorch 2.x), or opt the model out "
                  "with keel::model<M, keel::parameters_only>.");
    static_assert(reflect::is_reflected<Module>,
                  "keel [model state declared]: the model (or a submodule class of your own that it declares) has "
                  "data members of its own, and a checkpoint saves only what is declared. List them with "
                  "BOOST_HANA_DEFINE_STRUCT (or BOOST_HANA_ADAPT_STRUCT): submodules and registered tensors are saved "
                  "as parameters and buffers, every other member of the model in the section 'model.members'. For a "
                  "module you cannot change, opt out at the Trainer with keel::model<M, keel::parameters_only> "
                  "(recorded in each checkpoint).");
    if constexpr (reflect::is_reflected<Module> && !detail::module_is_virtual_base<Module>::value) {
      static_assert(std::is_same_v<layout::reflection_owner_t<Module>, Module>,
                    "keel [model state declared]: the module's declared members must all be declared in the module "
                    "class itself (a declaration inherited from a base module cannot list the members it adds).");
      if constexpr (std::is_same_v<layout::reflection_owner_t<Module>, Module>) {
        check_declared_layout<Module, torch::nn::Module>();
        static_assert(detail::members_serializable<Module, Format>(layout::accessors_t<Module>{}),
                      "keel [model state declared]: a declared model member that is not a tensor or a submodule "
                      "has no cereal serialization, so it cannot be saved in the section 'model.members'. Include "
                      "the cereal header for its type (<cereal/types/vector.hpp>...) or give it a serialize.");
        static_assert(TopLevel || !detail::has_plain_members(layout::accessors_t<Module>{}),
                      "keel [model state declared]: a submodule class of your own declares plain members (not "
                      "tensors or submodules); keel saves the plain members of the model class itself only (the "
                      "section 'model.members'). Keep that state in the model, or hold it in a registered buffer.");
        detail::check_submodules<Format>(layout::accessors_t<Module>{});
      }
    }
    return true;
  }
}

template <class Module, class Format, bool ParametersOnly>
constexpr bool check_model_state() {
  if constexpr (ParametersOnly) {
    static_assert(std::is_base_of_v<torch::nn::Module, Module>,
                  "keel::model<M>: M must derive from torch::nn::Module (or be the holder that TORCH_MODULE(M) "
                  "declares).");
    return true;
  } else {
    return check_module_state<Module, Format, true>();
  }
}

/// Construction-time half of the model's rules: every declared tensor is a registered parameter
/// or buffer, every declared submodule a registered one, every declared member where the
/// declaration puts it. One line per problem; empty when the model is as declared.
template <class Module>
std::vector<std::string> model_declaration_problems(const Module& module, const std::string& type_name) {
  std::vector<std::string> problems;
  if constexpr (model_adds_data<Module>() && reflect::is_reflected<Module>) {
    problems = layout::misplaced_members<Module, torch::nn::Module>(module, type_name);
    const auto parameters = module.named_parameters(true);
    const auto buffers = module.named_buffers(true);
    const auto submodules = module.modules(/*include_self=*/false);
    auto registered_tensor = [&](const torch::Tensor& t) {
      for (const auto& item : parameters)
        if (item.value().is_same(t)) return true;
      for (const auto& item : buffers)
        if (item.value().is_same(t)) return true;
      return false;
    };
    auto registered_module = [&](const torch::nn::Module* m) {
      for (const auto& s : submodules)
        if (s.get() == m) return true;
      return false;
    };
    boost::hana::for_each(boost::hana::accessors<Module>(), [&](auto pair) {
      const auto& member = boost::hana::second(pair)(module);
      using M = std::decay_t<decltype(member)>;
      const std::string name = boost::hana::to<const char*>(boost::hana::first(pair));
      if constexpr (std::is_same_v<M, torch::Tensor>) {
        // An undefined tensor holds nothing yet (an optional bias registered as undefined,
        // which named_parameters skips); one assigned later without registering is not seen.
        if (member.defined() && !registered_tensor(member))
          problems.push_back("keel: " + type_name + "'s declared tensor '" + name +
                             "' is not a registered parameter or buffer, so a checkpoint would not save it: keep "
                             "the tensor that register_parameter or register_buffer returns in it");
      } else if constexpr (std::is_base_of_v<torch::detail::ModuleHolderIndicator, M>) {
        if (!member.is_empty() && !registered_module(member.ptr().get()))
          problems.push_back("keel: " + type_name + "'s declared submodule '" + name +
                             "' is not registered, so a checkpoint would not save it: keep what register_module "
                             "returns in it");
        if (!member.is_empty())  // a submodule class of the user's: its own declaration, checked the same way
          for (auto& p : model_declaration_problems(*member.ptr(), type_name + "." + name)) problems.push_back(std::move(p));
      } else if constexpr (detail::is_module_pointer<M>::value) {
        if (member && !registered_module(member.get()))
          problems.push_back("keel: " + type_name + "'s declared submodule '" + name +
                             "' is not registered, so a checkpoint would not save it: keep what register_module "
                             "returns in it");
        if (member)
          for (auto& p : model_declaration_problems(*member, type_name + "." + name)) problems.push_back(std::move(p));
      }
    });
  }
  return problems;
}

}  // namespace keel
