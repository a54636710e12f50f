// Completion targets for io_uring requests.
//
// Every SQE grelay submits carries a pointer to a Completion in user_data (0 = nobody
// cares about the CQE). Each op kind gets its own small completion type, bound to its
// owner's handler at compile time; handlers are noexcept and never throw.
#pragma once

#include <cstdint>

namespace grelay::relay {

class Completion {
public:
  // res: the CQE's result (bytes or -errno); flags: the CQE's flags (F_MORE, F_BUFFER...).
  virtual void complete(int32_t res, uint32_t flags) noexcept = 0;

protected:
  ~Completion() = default;
};

// A completion that calls Owner::*Handler. Distinct handlers make distinct types, so
// each op kind of an owner has its own completion type without boilerplate.
template <class Owner, void (Owner::*Handler)(int32_t, uint32_t) noexcept>
class BoundCompletion final : public Completion {
public:
  explicit BoundCompletion(Owner& owner) : owner_(&owner) {}
  void complete(int32_t res, uint32_t flags) noexcept override { (owner_->*Handler)(res, flags); }

private:
  Owner* owner_;
};

}  // namespace grelay::relay
