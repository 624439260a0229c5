// SQLite's session extension (changesets), which Debian's libsqlite3 is built with
// (SQLITE_ENABLE_SESSION, SQLITE_ENABLE_PREUPDATE_HOOK). Declared here by hand, under
// names of our own, because the header hides them unless those macros are set and GRDB's
// own SQLite module already declares the rest of the API: only BynarStore imports this.
#ifndef BYNAR_SQLITE_SESSION_SHIM_H
#define BYNAR_SQLITE_SESSION_SHIM_H

struct sqlite3;
struct sqlite3_session;
struct sqlite3_changeset_iter;

int sqlite3session_create(struct sqlite3 *db, const char *zDb, struct sqlite3_session **ppSession);
void sqlite3session_delete(struct sqlite3_session *pSession);
int sqlite3session_attach(struct sqlite3_session *pSession, const char *zTab);
void sqlite3session_table_filter(struct sqlite3_session *pSession, int (*xFilter)(void *pCtx, const char *zTab), void *pCtx);
int sqlite3session_changeset(struct sqlite3_session *pSession, int *pnChangeset, void **ppChangeset);
int sqlite3changeset_apply(struct sqlite3 *db, int nChangeset, void *pChangeset,
                           int (*xFilter)(void *pCtx, const char *zTab),
                           int (*xConflict)(void *pCtx, int eConflict, struct sqlite3_changeset_iter *p),
                           void *pCtx);

static inline void bynar_sqlite3_free_changeset(void *p) {
    extern void sqlite3_free(void *);
    sqlite3_free(p);
}

// Conflict codes and answers (sqlite3.h).
#define BYNAR_CHANGESET_DATA 1
#define BYNAR_CHANGESET_NOTFOUND 2
#define BYNAR_CHANGESET_CONFLICT 3
#define BYNAR_CHANGESET_CONSTRAINT 4
#define BYNAR_CHANGESET_FOREIGN_KEY 5
#define BYNAR_CHANGESET_OMIT 0
#define BYNAR_CHANGESET_REPLACE 1
#define BYNAR_CHANGESET_ABORT 2

#endif
