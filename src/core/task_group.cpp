// TaskGroup counting and waiting.
//
// Why the protocol is right (GroupState in task_group.hpp has the fields):
//  - Before publication, pending = local_pending - remote_done. The owner is
//    the only writer of local_pending; remote completions only add to
//    remote_done, so the owner's test `remote_done == local_pending` (acquire,
//    pairing with the completers' acq_rel adds) is exact at the moment of the
//    load and can only move towards "done" afterwards.
//  - Publication subtracts local_pending from remote_done in one RMW, so from
//    then on remote_done == -(children still out), mod 2^64. The child whose
//    add takes it from -1 to 0 is the last one, and it is the only one that
//    touches the owner after its add; it uses the owner's Parker, read before
//    the add while the group surely existed. Parkers are immortal, so an
//    unpark that lands after the owner left is a harmless spurious wake-up.
//  - Before publication remote_done only grows from 0 and cannot reach -1, so
//    no child unparks anybody in the common, spinning case.
//  - A worker may hold back the count of children it finished (a run of one
//    group's children, added at once): until it adds them the group is not
//    done, and it adds them before it runs anything else or looks for work
//    in vain, so a waiting owner never waits on a worker that waits too.
#include "ordo/task_group.hpp"

#include <cstring>

#include "core/scheduler_core.hpp"
#include "core/task_prepare.hpp"

namespace ordo::detail {

void throw_not_owner() {
  throw Error(
      "ordo: TaskGroup::spawn called from a thread that does not own the group; a child that spawns work "
      "should create its own TaskGroup");
}

namespace {

// `published` is always false here: only the owner spawns, and group_wait
// resets it before returning. A child needs no resources, so a worker's
// spawn skips submit()'s checks unless an ager tracks the child's level: a
// call and its frame per spawn in recursive fork/join.
[[gnu::always_inline]] inline bool queue_child(GroupState& g, Task* t) {
  if (!g.core->push_own(t) && !g.core->submit(t)) return false;
  ++g.local_pending;
  return true;
}

// The payload sizes of lambdas that capture one to four references or
// pointers get a copy of constant size, which compiles to moves; others a
// call to memcpy. memcpy begins the callable's lifetime in the node (it is
// trivially copyable, an implicit-lifetime type); exec reads it as the type.
[[gnu::always_inline]] inline void copy_payload(void* to, const void* from, std::size_t size) {
  switch (size) {
    case 8:
      std::memcpy(to, from, 8);
      return;
    case 16:
      std::memcpy(to, from, 16);
      return;
    case 24:
      std::memcpy(to, from, 24);
      return;
    case 32:
      std::memcpy(to, from, 32);
      return;
    default:
      std::memcpy(to, from, size);
  }
}

}  // namespace

bool group_spawn(GroupState& g, Task* t) { return queue_child(g, t); }

bool group_spawn_bytes(GroupState& g, std::optional<Priority> priority, ExecFn exec, const void* payload,
                       std::size_t size) {
  Task* t = prepare_node(*g.core, priority, TaskKind::group, exec);
  copy_payload(t->payload, payload, size);
  t->group = &g;
  if (!queue_child(g, t)) {
    pool::free(t);  // nothing to destroy in a payload of plain bytes
    return false;
  }
  return true;
}

namespace {

// Adds `children` finished children to g's count; the add that brings it to
// zero after publication wakes the owner, through the parker read while the
// group surely existed.
void add_remote_done(GroupState& g, Parker* owner, std::uint64_t children) noexcept {
  // acq_rel: release publishes the children's effects (and their error
  // record) to the owner's acquire load; acquire orders us after earlier
  // completions.
  if (g.remote_done.fetch_add(children, std::memory_order_acq_rel) + children == 0) owner->unpark();
}

}  // namespace

void group_complete(GroupState& g) noexcept {
  Worker* const w = tls_context.worker;
  if (w != nullptr && w->counted_group == &g) {
    // Another of a run of this group's children: counted here without
    // reading the group, whose line the owner writes at every spawn.
    ++w->counted;
    return;
  }
  Parker* owner = g.owner_parker;  // read while the group surely exists
  if (owner == tls_context.parker && !g.published) {
    --g.local_pending;  // the owner finished its own child: no atomic needed
    return;
  }
  if (w != nullptr) {
    // A worker counts a run of children of one group itself and adds them
    // in one RMW: the group's counter line, shared by every worker and the
    // owner, crossed cores once per child (a tenth of spawn_external's time
    // on a day of slow core-to-core transfers).
    publish_group_children(*w);
    w->counted_group = &g;
    w->counted_owner = owner;
    w->counted = 1;
    return;
  }
  add_remote_done(g, owner, 1);
}

void publish_group_children(Worker& w) noexcept {
  if (w.counted == 0) return;
  GroupState& g = *w.counted_group;
  const std::uint64_t children = std::exchange(w.counted, 0);
  w.counted_group = nullptr;
  add_remote_done(g, w.counted_owner, children);
}

void record_group_error(GroupState& g, std::exception_ptr e) noexcept {
  bool expected = false;
  // Only the first error is kept. The owner reads `error` after it observed
  // this child's completion (acquire), which is sequenced after this write.
  if (g.failed.compare_exchange_strong(expected, true, std::memory_order_relaxed)) g.error = std::move(e);
}

namespace {

void join(GroupState& g) noexcept {
  auto done = [&g] {
    // acquire pairs with the acq_rel adds in group_complete().
    std::uint64_t remote = g.remote_done.load(std::memory_order_acquire);
    return g.published ? remote == 0 : remote == g.local_pending;
  };
  auto prepare_sleep = [&g] {
    std::uint64_t mine = g.local_pending;
    g.local_pending = 0;
    g.published = true;
    // acq_rel: acquire as in done(); release is not needed by anyone but is free.
    std::uint64_t before = g.remote_done.fetch_sub(mine, std::memory_order_acq_rel);
    return before == mine;
  };
  SchedulerCore::wait_until(done, prepare_sleep);
  // Every child has finished and none touches the group any more.
  g.remote_done.store(0, std::memory_order_relaxed);
  g.local_pending = 0;
  g.published = false;
}

}  // namespace

void group_wait(GroupState& g) {
  join(g);
  if (g.failed.load(std::memory_order_relaxed)) {
    std::exception_ptr e = std::move(g.error);
    g.error = nullptr;
    g.failed.store(false, std::memory_order_relaxed);
    g.cancelled.store(false, std::memory_order_relaxed);
    std::rethrow_exception(e);
  }
  if (g.cancelled.load(std::memory_order_relaxed)) {
    g.cancelled.store(false, std::memory_order_relaxed);
    throw TaskCancelled{};
  }
}

void group_wait_quietly(GroupState& g) noexcept {
  join(g);
  g.error = nullptr;
  g.failed.store(false, std::memory_order_relaxed);
  g.cancelled.store(false, std::memory_order_relaxed);
}

}  // namespace ordo::detail
