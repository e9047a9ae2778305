// ordo: an in-process task scheduler. Include this header for the whole public API.
#pragma once

#include "ordo/errors.hpp"
#include "ordo/handle.hpp"
#include "ordo/durable.hpp"
#include "ordo/journal.hpp"
#include "ordo/observability.hpp"
#include "ordo/options.hpp"
#include "ordo/priority.hpp"
#include "ordo/scheduler.hpp"
#include "ordo/task_group.hpp"
#include "ordo/workflow.hpp"

#define ORDO_VERSION_MAJOR 0
#define ORDO_VERSION_MINOR 1
#define ORDO_VERSION_PATCH 0
