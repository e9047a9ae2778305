// The control of then_on_an_lvalue_handle: the same call on an rvalue
// compiles, so that test fails for the reason it names and no other.
#include "ordo/ordo.hpp"

int main() {
  ordo::Scheduler s{{.workers = 1}};
  auto h = s.submit([] { return 1; });
  auto next = std::move(h).then([](int x) { return x + 1; });
  return next.get() == 2 ? 0 : 1;
}
