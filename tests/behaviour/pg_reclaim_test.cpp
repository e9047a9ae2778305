// A job claimed again by the same process right after its previous attempt's
// outcome committed — a failure retried at once, here — while the finisher
// has not yet forgotten that attempt. The process holds both attempts of one
// job for a moment; each must keep its own entry, or the new claim is lost:
// never run, never renewed, taken back only when its lease runs out (with an
// attempt counted that never ran).
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"
#include "ordo/scheduler.hpp"
#include "pg_support.hpp"
#include "test_support.hpp"

namespace {

using namespace std::chrono_literals;
using namespace ordo::test;

TEST(PgReclaim, AFailureRetriedAtOnceRunsItsNextAttemptWithoutWaitingForTheLease) {
  ScratchDatabase db;
  ordo::Scheduler sched({.workers = 2});
  ordo::PostgresStore store = ordo::postgres(db.conninfo());
  store.lease = 60s;  // a lost claim would sit out the whole test
  store.poll = 50ms;
  ordo::DurableTasks jobs(sched, store);
  ordo::TaskTypeOptions options;
  options.retry.max_attempts = 2;
  options.retry.initial_backoff = 0ms;  // the retry is claimable the moment the failure commits
  options.retry.jitter = 0;
  std::mutex mu;
  std::vector<unsigned> attempts_seen;
  std::atomic<int> succeeded{0};
  jobs.define("flaky", [&](ordo::TaskContext& ctx, std::span<const std::byte>) {
    {
      std::lock_guard lock(mu);
      attempts_seen.push_back(ctx.attempt());
    }
    if (ctx.attempt() == 1) throw std::runtime_error("first attempt fails");
    ++succeeded;
  }, options);
  jobs.start();
  // Something else competes for the two cores, as a busy process does: the
  // finisher then often records the failure after the claimer re-claimed.
  std::atomic<bool> busy{true};
  std::thread spinner([&] {
    while (busy) std::this_thread::yield();
  });
  constexpr int kJobs = 1000;
  for (int i = 0; i < kJobs; ++i) jobs.enqueue("flaky", std::to_string(i));
  const bool all = eventually([&] { return succeeded.load() == kJobs; }, 30s);
  busy = false;
  spinner.join();
  EXPECT_TRUE(all) << succeeded.load() << " of " << kJobs
                   << " succeeded within 30 s: the rest wait for a lease (60 s) that nothing renews";
  {
    std::lock_guard lock(mu);
    for (unsigned a : attempts_seen) EXPECT_LE(a, 2u) << "an attempt ran that was not claimed for it";
  }
  jobs.shutdown(ordo::ShutdownMode::cancel);
}

}  // namespace
