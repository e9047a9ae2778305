// Durable tasks: accepting one (enqueue: checked, journaled, then queued or
// scheduled) and handing queued tasks to the scheduler.
#include <algorithm>

#include "durable/runtime.hpp"
#include "journal/format.hpp"
#include "journal/records.hpp"
#include "ordo/resource.hpp"

namespace ordo::detail {
namespace {

// The task object the scheduler runs: runs the task, or, destroyed unrun
// (the scheduler cancelled it or refused it), tells the runtime so.
struct Runner {
  DurableRuntime* rt;
  TaskId id;
  Runner(DurableRuntime* rt, TaskId id) noexcept : rt(rt), id(id) {}
  Runner(Runner&& other) noexcept : rt(std::exchange(other.rt, nullptr)), id(other.id) {}
  Runner& operator=(Runner&&) = delete;
  ~Runner() {
    if (rt != nullptr) rt->dropped(id);
  }
  void operator()() { std::exchange(rt, nullptr)->run(id); }
};

}  // namespace

void DurableRuntime::queue_locked(JournaledTask& task) {
  task.state = JournaledTask::State::queued;
  task.due_ns = 0;
  ++in_flight_;
  postings_.push_back(task.id);
}

void DurableRuntime::post_pending(std::unique_lock<std::mutex>& lock) {
  // What each post needs is read under mu_; the posts run without it (a
  // refused post destroys its Runner, which takes mu_). A chunk at a time:
  // a recovery queues every live task at once, and one batch of them all
  // was tens of megabytes of fresh pages, faulted in, written and read back
  // (recovery/ordo 1.4x faster on a slow day without it). Whoever takes
  // postings_ posts all it took; another caller meanwhile takes only what
  // was queued after.
  struct Posting {
    TaskId id;
    SubmitOptions options;
  };
  constexpr std::size_t kChunk = 256;
  std::vector<TaskId> ids;
  std::vector<Posting> chunk;
  chunk.reserve(kChunk);
  while (!postings_.empty()) {
    ids.clear();
    ids.swap(postings_);
    for (std::size_t next = 0; next < ids.size();) {
      const std::size_t end = std::min(ids.size(), next + kChunk);
      for (; next < end; ++next) {
        const JournaledTask& task = tasks_.at(ids[next]);
        Posting p{task.id, SubmitOptions{.priority = Priority{task.level}}};
        for (const auto& [name, amount] : task.needs()) p.options.needs.push_back({scheduler_.find_resource_group(name), amount});
        chunk.push_back(std::move(p));
      }
      lock.unlock();
      for (Posting& p : chunk) {
        try {
          scheduler_.post(Runner(this, p.id), std::move(p.options));
        } catch (...) {
          // Refused (the scheduler is stopping, or a need no longer fits): the
          // Runner was dropped, which left the task live in the journal.
        }
      }
      chunk.clear();
      lock.lock();
    }
  }
}

DurableRuntime::Accepted DurableRuntime::check_enqueue(std::string_view type, std::span<const std::byte> args,
                                                      const EnqueueOptions& options) const {
  auto type_it = types_.find(std::string(type));
  if (type_it == types_.end()) throw InvalidArgument("ordo: no durable task type named '" + std::string(type) + "'");
  if (options.needs.size() > records::kMaxNeeds) throw InvalidArgument("ordo: a durable task may need at most 255 groups");
  if (!options.global_needs.empty()) {
    throw InvalidArgument("ordo: durable task needs global group '" + options.global_needs.front().group +
                          "': global groups need the PostgreSQL store (this one is a journal)");
  }
  if (type_it->second.options.transactional) {
    throw InvalidArgument("ordo: durable type '" + std::string(type) +
                          "' is transactional: that needs the PostgreSQL store (this one is a journal)");
  }
  Accepted a;
  a.kind = &type_it->second;
  a.needs.reserve(options.needs.size());  // journaled by name, resolved by name at each start
  for (const Need& need : options.needs) {
    if (!need.group.valid()) throw InvalidArgument("ordo: a need of a durable task names no resource group (a default-constructed ResourceGroup)");
    const std::string& name = need.group.name();
    records::check_str16(name, "a resource group name a durable task needs");
    // name() refers to the group's own string: the same address is the same
    // group, so a group of another scheduler with this name is refused.
    const ResourceGroup mine = scheduler_.find_resource_group(name);
    if (!mine.valid() || &mine.name() != &name) {
      throw InvalidArgument("ordo: durable task needs resource group '" + name + "', which is not this scheduler's");
    }
    if (need.amount == 0 || need.amount > mine.limit()) {
      throw InvalidArgument("ordo: durable task needs " + std::to_string(need.amount) + " of resource group '" + name +
                            "', whose limit is " + std::to_string(mine.limit()));
    }
    a.needs.emplace_back(name, need.amount);
  }
  records::check_str16(options.idempotency_key, "the idempotency key of a durable task");
  const auto priority = options.priority.value_or(type_it->second.options.priority.value_or(Priority::normal));
  if (static_cast<unsigned>(priority) >= scheduler_.level_count()) {
    throw InvalidArgument("ordo: priority level " + std::to_string(static_cast<unsigned>(priority)) +
                          " is beyond the scheduler's levels");
  }
  a.level = static_cast<std::uint8_t>(priority);
  a.max_attempts = options.max_attempts.value_or(0);
  if (options.run_at) a.due = std::chrono::duration_cast<std::chrono::nanoseconds>(options.run_at->time_since_epoch()).count();
  if (options.delay) a.due = wall_now_ns() + std::chrono::nanoseconds(*options.delay).count();
  // The ENQUEUE record's size, refused here rather than by the journal's
  // append: enqueue_many appends a batch, and a refusal midway would leave
  // the records before it in the journal.
  std::size_t record_bytes = 8 + 2 + type.size() + 1 + 4 + 8 + 2 + options.idempotency_key.size() + 1 + 8 + 4 + args.size();
  for (const auto& [name, amount] : a.needs) record_bytes += 2 + name.size() + 8;
  if (record_bytes > wal::kMaxPayload) {
    throw InvalidArgument("ordo: a durable task's journal record is limited to 64 MiB (this one needs " +
                          std::to_string(record_bytes) + " bytes)");
  }
  a.args = args;
  return a;
}

JournaledTask* DurableRuntime::admit_locked(std::string_view type, Accepted& a, const std::string& key, TaskId& existing) {
  if (key_taken_locked(key, existing)) return nullptr;
  JournaledTask* task = &tasks_[next_id_];  // stays in tasks_ until it completes, which needs its post
  task->id = next_id_++;
  task->type = std::string(type);
  task->kind = a.kind;
  task->args.assign(reinterpret_cast<const char*>(a.args.data()), a.args.size());
  task->level = a.level;
  task->max_attempts = a.max_attempts;
  if (!key.empty() || !a.needs.empty()) {
    task->more().key = key;
    task->more().needs = std::move(a.needs);
  }
  task->state = JournaledTask::State::waiting;  // not runnable until its ENQUEUE is durable
  if (!key.empty()) keys_[key] = KeyEntry{task->id, 0};
  return task;
}

Lsn DurableRuntime::append_enqueue(const JournaledTask& j, std::int64_t due) {
  records::Enqueue record{.type = j.type, .level = j.level, .max_attempts = j.max_attempts, .run_at_ns = due,
                          .key = j.key(), .needs = {}, .workflow = 0, .node = 0, .args = j.args};
  for (const auto& [name, amount] : j.needs()) record.needs.push_back({name, amount});
  return journal_->append(RecordType::enqueue, j.id, records::encode(record).view());
}

void DurableRuntime::forget_enqueue_locked(JournaledTask& j) noexcept {
  if (!j.key().empty()) keys_.erase(j.key());
  tasks_.erase(j.id);
}

void DurableRuntime::release_enqueue_locked(JournaledTask& j, std::int64_t due) {
  if (due > wall_now_ns()) {
    schedule_locked(j, due, false);
  } else {
    queue_locked(j);
  }
}

TaskId DurableRuntime::enqueue(std::string_view type, std::span<const std::byte> args, EnqueueOptions options) {
  Accepted a = check_enqueue(type, args, options);
  std::unique_lock lock(mu_);
  if (!started_) throw Error("ordo: DurableTasks::enqueue before start()");
  if (stopping_) throw Error("ordo: DurableTasks is shutting down and accepts no new tasks");
  TaskId existing = 0;
  JournaledTask* task = admit_locked(type, a, options.idempotency_key, existing);
  if (task == nullptr) return existing;
  JournaledTask& j = *task;
  const TaskId id = j.id;
  lock.unlock();
  try {
    journal_->wait_durable(append_enqueue(j, a.due));
  } catch (...) {
    lock.lock();
    forget_enqueue_locked(j);
    notify_drain_locked();
    throw;
  }
  lock.lock();
  release_enqueue_locked(j, a.due);
  post_pending(lock);  // j may be run, and gone, once this drops the lock
  return id;
}

std::vector<TaskId> DurableRuntime::enqueue_many(std::span<const NewTask> batch) {
  std::vector<Accepted> checked;
  checked.reserve(batch.size());
  for (const NewTask& t : batch) {
    checked.push_back(check_enqueue(t.type, std::as_bytes(std::span<const char>(t.args.data(), t.args.size())), t.options));
  }
  std::vector<TaskId> ids(batch.size(), 0);
  std::vector<JournaledTask*> admitted(batch.size(), nullptr);  // null: its key named a task already there
  std::unique_lock lock(mu_);
  if (!started_) throw Error("ordo: DurableTasks::enqueue_many before start()");
  if (stopping_) throw Error("ordo: DurableTasks is shutting down and accepts no new tasks");
  for (std::size_t i = 0; i < batch.size(); ++i) {
    // A key repeated within the batch finds the first one's task (admitted just before).
    admitted[i] = admit_locked(batch[i].type, checked[i], batch[i].options.idempotency_key, ids[i]);
    if (admitted[i] != nullptr) ids[i] = admitted[i]->id;
  }
  lock.unlock();
  try {
    // One wait for the last record: the journal makes everything before it durable with it.
    std::optional<Lsn> last;
    for (std::size_t i = 0; i < batch.size(); ++i)
      if (admitted[i] != nullptr) last = append_enqueue(*admitted[i], checked[i].due);
    if (last) journal_->wait_durable(*last);
  } catch (...) {
    lock.lock();
    for (JournaledTask* j : admitted)
      if (j != nullptr) forget_enqueue_locked(*j);
    notify_drain_locked();
    throw;
  }
  lock.lock();
  for (std::size_t i = 0; i < batch.size(); ++i)
    if (admitted[i] != nullptr) release_enqueue_locked(*admitted[i], checked[i].due);
  post_pending(lock);
  return ids;
}

}  // namespace ordo::detail
