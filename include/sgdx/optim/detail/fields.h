#pragma once
// The fields of an optimizer's options or per-parameter state, listed once. A list is
// an X-macro of X(type, name, default) entries; SGDX_FIELDS(LIST) inside the struct
// declares each as TORCH_ARG(type, name) = default (fluent, as LibTorch's) and a
// for_each_field visitor from which the archive keys, == and << below all derive.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/arg.h>
#include <torch/serialize/archive.h>

#include <initializer_list>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>

#define SGDX_FIELDS(LIST)                                   \
  LIST(SGDX_DETAIL_DECLARE_FIELD)                           \
 public:                                                    \
  /** f("name", self.name()...) for each field, in order */ \
  template <typename F, typename... Self>                   \
  static void for_each_field(F&& f, Self&... self) {        \
    LIST(SGDX_DETAIL_VISIT_FIELD)                           \
  }

#define SGDX_DETAIL_DECLARE_FIELD(T, name, init) TORCH_ARG(T, name) = init;
#define SGDX_DETAIL_VISIT_FIELD(T, name, init) f(#name, self.name()...);

namespace sgdx::optim::detail {

template <typename T>
constexpr bool is_tensor_field = std::is_same_v<T, at::Tensor>;

/// Archive form of a scalar field: double, bool and int64_t as themselves; other
/// integers and enums as int64_t.
template <typename T>
c10::IValue field_to_ivalue(const T& v) {
  if constexpr (std::is_same_v<T, double> || std::is_same_v<T, bool> || std::is_same_v<T, int64_t>) {
    return c10::IValue(v);
  } else {
    static_assert(std::is_enum_v<T> || std::is_integral_v<T>, "field type without an archive form");
    return c10::IValue(static_cast<int64_t>(v));
  }
}

template <typename T>
void field_from_ivalue(const c10::IValue& v, T& out) {
  if constexpr (std::is_same_v<T, double>) {
    out = v.toDouble();
  } else if constexpr (std::is_same_v<T, bool>) {
    out = v.toBool();
  } else {
    out = static_cast<T>(v.toInt());
  }
}

/// Writes every field under its name; an undefined tensor is left out.
template <typename Fields>
void write_fields(const Fields& s, torch::serialize::OutputArchive& archive) {
  Fields::for_each_field(
      [&](const char* key, const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (is_tensor_field<T>) {
          if (v.defined()) archive.write(key, v, /*is_buffer=*/true);
        } else {
          archive.write(key, field_to_ivalue(v));
        }
      },
      s);
}

/// Reads every field written by write_fields. A missing scalar is an error naming
/// `who` and the key unless the key is in `added_later` (fields an older sgdx did not
/// write: they keep their current value); a missing tensor stays undefined.
template <typename Fields>
void read_fields(Fields& s, torch::serialize::InputArchive& archive, const char* who,
                 std::initializer_list<std::string_view> added_later = {}) {
  Fields::for_each_field(
      [&](const char* key, auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (is_tensor_field<T>) {
          at::Tensor t;  // a fresh tensor per read: reading into a defined one set_()s it in place
          v = archive.try_read(key, t, /*is_buffer=*/true) ? t : at::Tensor();
        } else {
          c10::IValue x;
          if (archive.try_read(key, x)) {
            field_from_ivalue(x, v);
            return;
          }
          bool optional = false;
          for (auto k : added_later) optional = optional || k == key;
          TORCH_CHECK(optional, who, ": the checkpoint has no field '", key, "'");
        }
      },
      s);
}

/// Field by field; tensors are equal when both are undefined or torch::equal.
template <typename Fields>
bool fields_equal(const Fields& a, const Fields& b) {
  bool same = true;
  Fields::for_each_field(
      [&](const char*, const auto& x, const auto& y) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (is_tensor_field<T>) {
          same = same && x.defined() == y.defined() && (!x.defined() || x.equal(y));
        } else {
          same = same && x == y;
        }
      },
      a, b);
  return same;
}

/// `name(field=value, ...)`; enums as their integer, tensors as their shape.
template <typename Fields>
std::ostream& print_fields(std::ostream& os, const char* name, const Fields& s) {
  os << name << '(';
  const char* sep = "";
  Fields::for_each_field(
      [&](const char* key, const auto& v) {
        using T = std::decay_t<decltype(v)>;
        os << sep << key << '=';
        sep = ", ";
        if constexpr (is_tensor_field<T>) {
          if (v.defined()) {
            os << v.sizes();
          } else {
            os << "undefined";
          }
        } else if constexpr (std::is_enum_v<T>) {
          os << static_cast<int64_t>(v);
        } else {
          os << v;
        }
      },
      s);
  return os << ')';
}

}  // namespace sgdx::optim::detail
