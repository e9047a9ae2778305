// BlockPool and PooledAllocator: blocks never overlap while taken, given
// blocks come back, a pool grows past its small chunks into populated ones,
// and a node-based container on the allocator keeps every entry.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "util/block_pool.hpp"

namespace ordo::detail {
namespace {

TEST(BlockPool, TakenBlocksNeverOverlapAndKeepTheirAlignment) {
  // 100,000 blocks of 136 bytes: 13 MiB, past the doubling small chunks
  // into the populated ones.
  BlockPool pool(136, 8);
  std::vector<char*> blocks;
  for (int i = 0; i < 100000; ++i) blocks.push_back(static_cast<char*>(pool.take()));
  std::vector<char*> sorted = blocks;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    ASSERT_EQ(reinterpret_cast<std::uintptr_t>(sorted[i]) % 8, 0u);
    if (i > 0) ASSERT_GE(sorted[i] - sorted[i - 1], 136) << "two taken blocks overlap";
  }
  for (char* b : blocks) {
    std::fill_n(b, 136, 'x');  // every byte of every block is writable
    pool.give(b);
  }
}

TEST(BlockPool, AnAlignmentAboveTheHeapsIsKeptInEveryChunk) {
  BlockPool pool(100, 64);
  for (int i = 0; i < 50000; ++i) {
    ASSERT_EQ(reinterpret_cast<std::uintptr_t>(pool.take()) % 64, 0u) << "block " << i;
  }
}

TEST(BlockPool, GivenBlocksAreTakenAgainBeforeAnyFreshOne) {
  BlockPool pool(64, 8);
  std::set<void*> first;
  for (int i = 0; i < 1000; ++i) first.insert(pool.take());
  for (void* b : first) pool.give(b);
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(first.count(pool.take())) << "a fresh block while given ones were free";
}

TEST(BlockPool, ThreadsTakingAndGivingNeverShareABlock) {
  // Each thread stamps its blocks with its id while it holds them and checks
  // the stamp before giving them back: a block handed to two threads at
  // once fails the check.
  BlockPool pool(64, 8);
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  std::vector<int> clashes(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::uint64_t*> held;
      for (int round = 0; round < 200; ++round) {
        for (int i = 0; i < 100; ++i) {
          auto* b = static_cast<std::uint64_t*>(pool.take());
          for (int w = 0; w < 8; ++w) b[w] = static_cast<std::uint64_t>(t + 1);
          held.push_back(b);
        }
        for (std::uint64_t* b : held) {
          for (int w = 0; w < 8; ++w) clashes[static_cast<std::size_t>(t)] += b[w] != static_cast<std::uint64_t>(t + 1);
          pool.give(b);
        }
        held.clear();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(clashes[static_cast<std::size_t>(t)], 0) << "thread " << t;
}

TEST(PooledAllocator, AHashMapOnItKeepsEveryEntryThroughInsertsAndErases) {
  std::unordered_map<std::uint64_t, std::string, std::hash<std::uint64_t>, std::equal_to<std::uint64_t>,
                     PooledAllocator<std::pair<const std::uint64_t, std::string>>>
      map;
  for (std::uint64_t i = 0; i < 200000; ++i) {
    map[i] = std::string(24, static_cast<char>('a' + i % 26));  // owns heap memory: a leak checker must see it
    if (i % 2 == 1) map.erase(i - 1);
  }
  ASSERT_EQ(map.size(), 100000u);
  for (std::uint64_t i = 1; i < 200000; i += 2) {
    auto it = map.find(i);
    ASSERT_NE(it, map.end()) << i;
    ASSERT_EQ(it->second, std::string(24, static_cast<char>('a' + i % 26)));
  }
}

}  // namespace
}  // namespace ordo::detail
