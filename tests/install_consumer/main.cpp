#include <ordo/ordo.hpp>

int main() {
  ordo::Scheduler s{{.workers = 2}};
  return s.submit([] { return 21 * 2; }).get() == 42 ? 0 : 1;
}
