// Records that specific checks keep in a transaction (TransactionFacts::
// results) without the core knowing their types: one value per type, made
// on first use, copied with the transaction. filters/auth keeps the SPF,
// DKIM and DMARC results here (auth_results() in filters/auth/auth_results.h).
#pragma once

#include <any>
#include <map>
#include <typeindex>
#include <typeinfo>

namespace postern {

class TypedSlots {
 public:
  // The T of this set, default-constructed on first use.
  template <typename T>
  T& get() {
    std::any& slot = slots_[std::type_index(typeid(T))];
    if (!slot.has_value()) slot.template emplace<T>();
    return *std::any_cast<T>(&slot);
  }

  // The T of this set, or nullptr when nobody made one.
  template <typename T>
  const T* find() const {
    auto it = slots_.find(std::type_index(typeid(T)));
    return it == slots_.end() ? nullptr : std::any_cast<T>(&it->second);
  }

 private:
  std::map<std::type_index, std::any> slots_;
};

}  // namespace postern
