// Must not compile: then() consumes its handle, so calling it on a named
// handle is refused with a message that says how to write it instead.
#include "ordo/ordo.hpp"

int main() {
  ordo::Scheduler s{{.workers = 1}};
  auto h = s.submit([] { return 1; });
  h.then([](int x) { return x + 1; });
  return 0;
}
