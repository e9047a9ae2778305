// The tests' own helpers: a helper that waits must fail with a message
// rather than hang a test until ctest's timeout.
#include "test_support.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace ordo {
namespace {

using namespace std::chrono_literals;

TEST(TestGate, WaitingForATaskThatNeverStartsAbortsWithTheProblemNamed) {
  test::Gate gate;
  EXPECT_DEATH(gate.wait_entered(1s), "test: still waiting for the gated task to start .* after 1 s");
}

TEST(TestGate, AGateThatIsNeverOpenedAbortsTheHolderWithTheProblemNamed) {
  test::Gate gate;
  EXPECT_DEATH(gate.hold(1s), "test: still waiting for a gate to open");
}

TEST(TestAwait, AConditionThatNeverComesAbortsWithWhatWasAwaited) {
  EXPECT_DEATH(test::await([] { return false; }, "the sky to fall", 1s), "test: still waiting for the sky to fall after 1 s");
}

TEST(TestGate, AnOpenedGateReleasesItsHolderAndWasSeenEntered) {
  test::Gate gate;
  std::thread holder([&] { gate.hold(); });
  gate.wait_entered();
  EXPECT_TRUE(gate.entered.load());
  gate.open.store(true);
  holder.join();
}

}  // namespace
}  // namespace ordo
