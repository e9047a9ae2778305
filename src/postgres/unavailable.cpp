// Built instead of the PostgreSQL store when ordo is configured with
// -DORDO_POSTGRES=OFF: the constructor says so.
#include "ordo/durable.hpp"
#include "ordo/postgres.hpp"

#include "durable/backend.hpp"  // the members a constructor that throws must be able to destroy

namespace ordo {

DurableTasks::DurableTasks(Scheduler&, const PostgresStore&, DurableOptions) {
  throw Error("ordo: this ordo was built without PostgreSQL (ORDO_POSTGRES=OFF): rebuild with libpq-dev installed");
}

}  // namespace ordo
