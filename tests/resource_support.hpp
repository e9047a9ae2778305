// Checks shared by the resource-group tests.
#pragma once

#include <gtest/gtest.h>

#include <vector>

#include "ordo/ordo.hpp"

namespace ordo::test {

// Once every task has finished: no permit is held, nobody waits, and the
// most ever taken stayed within each limit.
inline void expect_every_permit_back(const std::vector<ResourceGroup>& groups) {
  for (const ResourceGroup& g : groups) {
    const ResourceStats st = g.stats();
    EXPECT_EQ(st.in_use, 0u) << st.name;
    EXPECT_EQ(st.waiting, 0u) << st.name;
    EXPECT_LE(st.max_in_use, st.limit) << st.name;
  }
}

}  // namespace ordo::test
