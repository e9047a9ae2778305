#include "ordo/detail/dependency.hpp"

#include <new>
#include <vector>

#include "ordo/handle.hpp"
#include "resources/resource_manager.hpp"
#include "core/scheduler_core.hpp"
#include "core/task_pool.hpp"
#include "core/task_prepare.hpp"

namespace ordo::detail {

struct SuccNode {
  Task* succ;
  SuccNode* next;
  SuccMode mode;
};

PredList* PredList::make(std::uint32_t count) {
  const std::size_t bytes = sizeof(PredList) + (count > 0 ? count - 1 : 0) * sizeof(Task*);
  // Small lists (up to a dozen predecessors) take a pooled node: no malloc.
  const bool pooled = bytes <= kTaskNodeBytes;
  void* memory;
  if (pooled) {
    Task* node = allocate_task();
    node->~Task();
    memory = node;
  } else {
    memory = ::operator new(bytes);
  }
  auto* list = static_cast<PredList*>(memory);
  list->pooled = pooled;
  list->needs = nullptr;
  list->count = count;
  list->cursor = 0;
  list->next_release = nullptr;
  ::new (&list->fired) std::atomic<bool>(false);
  for (std::uint32_t i = 0; i < count; ++i) list->items[i] = nullptr;
  return list;
}

void PredList::destroy(PredList* list) noexcept {
  for (std::uint32_t i = 0; i < list->count; ++i)
    if (list->items[i] != nullptr) release_task(list->items[i]);
  if (list->needs != nullptr) pool::destroy(list->needs);
  list->fired.~atomic();
  if (list->pooled) {
    free_task(::new (static_cast<void*>(list)) Task);
  } else {
    ::operator delete(list);
  }
}

namespace {

std::atomic_ref<SuccNode*> successors_of(Task* t) noexcept { return std::atomic_ref<SuccNode*>(t->successors); }

// The decrement that reaches zero queues the task. From a worker the push is
// local and always accepted; from outside the pool after shutdown it is
// refused, and the task completes as cancelled right here.
void release_one(Task* succ) noexcept {
  // acq_rel: the predecessors' outcomes happen-before the dependent runs.
  if (succ->deps.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  succ->core->submit_or_cancel(succ);
}

void notify(SuccNode* node) noexcept {
  Task* succ = node->succ;
  // acq_rel on `fired`: orders the winning predecessor's outcome before the join reads it.
  if (node->mode == SuccMode::all || !succ->preds->fired.exchange(true, std::memory_order_acq_rel)) {
    release_one(succ);
  }
  release_task(succ);  // the node's reference
  delete node;
}

}  // namespace

void add_successor(Task* pred, Task* succ, SuccMode mode) {
  succ->refs.fetch_add(1, std::memory_order_relaxed);  // the node's; dropped by notify()
  auto* node = new SuccNode{succ, nullptr, mode};
  auto list = successors_of(pred);
  // acquire: pairs with release_dependents()' exchange (a closed list means the outcome is published).
  SuccNode* head = list.load(std::memory_order_acquire);
  for (;;) {
    if (head == kSuccessorsClosed) {  // pred already finished
      notify(node);
      return;
    }
    node->next = head;
    // release: publishes the node to release_dependents()' acquire exchange.
    if (list.compare_exchange_weak(head, node, std::memory_order_release, std::memory_order_acquire)) return;
  }
}

void arm_dependent(Task* t) { release_one(t); }

Task* make_dependent(SchedulerCore& core, std::optional<Priority> priority, std::uint32_t preds, ExecFn exec) {
  Task* t = prepare_task(core, priority, TaskKind::handle, exec);
  t->deps.store(1, std::memory_order_relaxed);  // the setup hold
  try {
    t->preds = PredList::make(preds);
  } catch (...) {
    free_task(t);
    throw;
  }
  return t;
}

namespace {

// A task's validated needs in a pooled node (pool::create default-initialises:
// no zeroing of the list per submission).
NeedList* make_need_list(SchedulerCore& core, std::span<const Need> needs, bool check_limits = true) {
  NeedList* list = pool::create<NeedList>();
  try {
    core.resources().fill_needs(*list, needs, check_limits);
  } catch (...) {
    pool::destroy(list);
    throw;
  }
  return list;
}

}  // namespace

void attach_needs(Task* t, std::span<const Need> needs, bool check_limits) {
  if (!needs.empty()) t->preds->needs = make_need_list(*t->core, needs, check_limits);
}

Task* make_detached_with_needs(SchedulerCore& core, std::optional<Priority> priority, std::span<const Need> needs,
                               ExecFn exec) {
  throw_if_stopped(core);
  Task* t = prepare_node(core, priority, TaskKind::detached, exec);
  try {
    t->needs = make_need_list(core, needs);
  } catch (...) {
    free_task(t);
    throw;
  }
  // A task with needs may be claimed (park_if_busy, a drain's cancel), which
  // takes a state word; relaxed: published with the node by its queuing.
  t->state.store(kQueued, std::memory_order_relaxed);
  return t;
}

void discard_detached_with_needs(Task* t) noexcept {
  pool::destroy(t->needs);
  free_task(t);
}

void throw_if_stopped(SchedulerCore& core) {
  if (tls_context.core != &core && !core.accepting()) throw SchedulerStopped{};
}

void discard_dependent(Task* t) noexcept {
  PredList::destroy(t->preds);  // releases whatever entries were already filled
  free_task(t);
}

void link_and_arm(Task* t, SuccMode mode) {
  PredList& preds = *t->preds;
  const std::int32_t waits = mode == SuccMode::all ? static_cast<std::int32_t>(preds.count) : (preds.count > 0 ? 1 : 0);
  t->deps.fetch_add(waits, std::memory_order_relaxed);  // published with the node by add_successor's CAS
  const unsigned level = t->level.load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < preds.count; ++i) {
    Task* pred = preds.items[i];
    add_successor(pred, t, mode);
    if (pred->level.load(std::memory_order_relaxed) > level && pred->core->level_count() > level) {
      raise_priority(pred, level);
    }
  }
  arm_dependent(t);
}

void release_dependents(Task* t) noexcept {
  // acq_rel: acquire pairs with add_successor's release CAS (the nodes are
  // complete); release publishes this task's outcome to dependents added later.
  SuccNode* node = successors_of(t).exchange(kSuccessorsClosed, std::memory_order_acq_rel);
  while (node != nullptr) {
    SuccNode* next = node->next;
    notify(node);
    node = next;
  }
}

namespace {

// A dependent still waiting for predecessors: held back (deps + 1) so that it
// cannot be queued at its old level meanwhile, re-levelled, and released
// again (queued now, at the new level, if its last predecessor finished
// meanwhile). When raised, its predecessors are appended to `inherit`, which
// must then be raised too. False, changing nothing, when it is not waiting.
bool relevel_waiting(Task* x, unsigned level, std::vector<Task*>& inherit) {
  // acquire: pairs with release_one()'s acq_rel decrements.
  std::int32_t d = x->deps.load(std::memory_order_acquire);
  // acq_rel: the hold is one more RMW in the chain of deps decrements that ends in the queuing.
  while (d > 0 && !x->deps.compare_exchange_weak(d, d + 1, std::memory_order_acq_rel)) {
  }
  if (d <= 0) return false;  // queued already (or being queued)
  // relaxed: published to whoever queues it by release_one()'s acq_rel decrement below.
  const unsigned previous = x->level.exchange(static_cast<std::uint8_t>(level), std::memory_order_relaxed);
  try {
    if (level < previous && x->preds != nullptr)
      inherit.insert(inherit.end(), x->preds->items, x->preds->items + x->preds->count);
  } catch (...) {  // no memory: the task must not stay held for ever
    release_one(x);
    throw;
  }
  release_one(x);
  return true;
}

}  // namespace

bool relevel_if_waiting(Task* t, unsigned level) {
  if (t->kind != TaskKind::handle || t->preds == nullptr) return false;
  // acquire: pairs with finish()'s exchange (a task claimed or done is left alone).
  if ((t->state.load(std::memory_order_acquire) & kStateMask) != kQueued) return false;
  std::vector<Task*> inherit;
  inherit.reserve(t->preds->count);  // before the hold: nothing to undo if it throws
  if (!relevel_waiting(t, level, inherit)) return false;  // the caller moves it
  // Raised: what it waits for inherits the new level, as at creation.
  for (Task* pred : inherit) raise_priority(pred, level);
  return true;
}

void raise_priority(Task* t, unsigned level) {
  std::vector<Task*> todo{t};
  while (!todo.empty()) {
    Task* x = todo.back();
    todo.pop_back();
    if (x->kind != TaskKind::handle || x->level.load(std::memory_order_relaxed) <= level) continue;
    // acquire: pairs with finish()'s exchange.
    if ((x->state.load(std::memory_order_acquire) & kStateMask) != kQueued) continue;  // started or finished
    if (!relevel_waiting(x, level, todo)) x->core->move_task(x, -1, level);  // queued (or being queued): move it
  }
}

}  // namespace ordo::detail
