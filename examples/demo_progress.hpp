// ordo-demo's live progress line: redrawn in place ten times a second while
// a story runs (when stdout is a terminal), then left on screen as the
// story's last state. Not a terminal (a CI log): only that last state.
//
// Thread-safety: one owner thread creates and finishes it; the status
// function is called from the line's own thread and must be thread-safe.
#pragma once

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace demo {

class ProgressLine {
 public:
  explicit ProgressLine(std::function<std::string()> status)
      : status_(std::move(status)), live_(::isatty(STDOUT_FILENO) == 1) {
    if (live_) thread_ = std::thread([this] { loop(); });
  }
  ~ProgressLine() { finish(); }
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  // Stops redrawing and prints the final status on its own line. Idempotent.
  void finish() {
    {
      std::lock_guard lock(mu_);
      if (done_) return;
      done_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
    std::printf("%s  %s\n", live_ ? "\r\033[K" : "", status_().c_str());
    std::fflush(stdout);
  }

 private:
  void loop() {
    std::unique_lock lock(mu_);
    while (!done_) {
      lock.unlock();
      std::printf("\r\033[K  %s", status_().c_str());
      std::fflush(stdout);
      lock.lock();
      wake_.wait_for(lock, std::chrono::milliseconds(100), [&] { return done_; });
    }
  }

  std::function<std::string()> status_;
  const bool live_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace demo
