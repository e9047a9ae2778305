// ordo::Outcome<T>: what a finished task produced — a value or an exception.
// A continuation that takes an Outcome<T> runs even when its predecessor
// failed or was cancelled, and decides what that means.
#pragma once

#include <exception>
#include <optional>
#include <utility>

namespace ordo {

template <class T>
struct Outcome {
  std::optional<T> value;
  std::exception_ptr error;

  bool has_value() const noexcept { return !error; }
  // The value, or the task's exception rethrown.
  T& get() & {
    if (error) std::rethrow_exception(error);
    return *value;
  }
  T&& get() && {
    if (error) std::rethrow_exception(error);
    return std::move(*value);
  }
};

template <>
struct Outcome<void> {
  std::exception_ptr error;

  bool has_value() const noexcept { return !error; }
  void get() const {
    if (error) std::rethrow_exception(error);
  }
};

}  // namespace ordo
