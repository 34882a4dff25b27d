/*
 * A fault-injecting PKCS#11 module for tests. It forwards every call to a real module
 * (SoftHSM2 by default) and, steered by a control file, injects what real tokens and HSMs
 * do to a service: a chosen CKR on the Nth call of a function, added latency, a call that
 * hangs, a token that is removed and comes back, a logout behind the caller's back. It
 * counts calls per function so tests can assert, e.g., that a wrong PIN produced exactly
 * one C_Login.
 *
 * Environment:
 *   FAULT_PKCS11_TARGET  the real module (default /usr/lib/softhsm/libsofthsm2.so)
 *   FAULT_PKCS11_DIR     directory holding `control` (read when it changes) and `counts`
 *                        (a line per function, kept current through a shared mapping)
 *
 * Control file, one rule a line (a new file replaces all rules and their progress):
 *   fail FN N CKR_NAME     the Nth call of FN from now returns CKR_NAME instead (once)
 *   fail FN every CKR_NAME every call of FN returns CKR_NAME
 *   delay FN MS            every call of FN first sleeps MS milliseconds
 *   hang FN MS [N]         the next (or Nth) call of FN sleeps MS milliseconds first (once)
 *   removed                the token is gone: no slot with a token, calls get CKR_DEVICE_REMOVED
 *   logout                 the token is logged out before the next intercepted call (once)
 *   nologin                C_Login succeeds without reaching the token (a cloud HSM stand-in)
 *   maxsessions N          C_GetTokenInfo reports at most N sessions (and N R/W sessions)
 *   maxkeybits N           C_GetMechanismInfo reports keys of at most N bits
 *   tokenflags HEX         C_GetTokenInfo reports these flags too (e.g. 0x20000, CKF_USER_PIN_FINAL_TRY)
 *   hidealwaysauth         CKA_ALWAYS_AUTHENTICATE reads as absent (the token still enforces it)
 *   slotevents             C_WaitForSlotEvent works like a card reader's: it returns when `removed`
 *                          comes or goes, and with CKR_CRYPTOKI_NOT_INITIALIZED once C_Finalize is
 *                          called (without this rule it goes to the real module)
 * FN may be `*` for every intercepted function.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

#define MAX_RULES 32

enum kind { FAIL_NTH, FAIL_EVERY, DELAY, HANG, REMOVED, LOGOUT, NOLOGIN, MAXSESSIONS, MAXKEYBITS, TOKENFLAGS, HIDEALWAYSAUTH, SLOTEVENTS };

struct rule {
  enum kind kind;
  char fn[40];
  long n;       /* FAIL_NTH: calls left before it fires; DELAY/HANG: milliseconds */
  long nth;     /* HANG: calls left before it fires */
  CK_RV rv;
  int spent;
};

static CK_FUNCTION_LIST fault_list;
static CK_FUNCTION_LIST_PTR real;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct rule rules[MAX_RULES];
static int nrules;
static struct timespec control_mtime;
static off_t control_size = -1;
static ino_t control_ino;
static CK_SESSION_HANDLE last_session = CK_INVALID_HANDLE;
/* C_Finalize calls so far: a C_WaitForSlotEvent waiting when one comes returns. */
static unsigned long finalizations;
/* Whether the token was removed when C_WaitForSlotEvent last looked (-1: not yet). */
static int events_removed = -1;

static const char *names[] = {"C_Initialize", "C_Finalize", "C_GetSlotList", "C_GetTokenInfo", "C_GetMechanismList", "C_OpenSession",
                              "C_CloseSession", "C_GetSessionInfo", "C_Login", "C_Logout", "C_FindObjectsInit", "C_FindObjects",
                              "C_SignInit", "C_Sign", "C_VerifyInit", "C_Verify", "C_GetAttributeValue", "C_GenerateKeyPair",
                              "C_LoginContextSpecific", "C_WaitForSlotEvent"};
#define NFN (sizeof names / sizeof names[0])
static unsigned long counts[NFN];

static const struct { const char *name; CK_RV rv; } ckrs[] = {
    {"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
    {"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
    {"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
    {"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
    {"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
    {"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
    {"CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN},
    {"CKR_PIN_LOCKED", CKR_PIN_LOCKED},
    {"CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED},
    {"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
    {"CKR_SESSION_COUNT", CKR_SESSION_COUNT},
    {"CKR_HOST_MEMORY", CKR_HOST_MEMORY},
    {"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY},
};

static const char *dir(void) { return getenv("FAULT_PKCS11_DIR"); }

static int fn_index(const char *fn) {
  for (size_t i = 0; i < NFN; i++)
    if (strcmp(names[i], fn) == 0) return (int)i;
  return -1;
}

static CK_RV ckr_value(const char *name) {
  for (size_t i = 0; i < sizeof ckrs / sizeof ckrs[0]; i++)
    if (strcmp(ckrs[i].name, name) == 0) return ckrs[i].rv;
  return (CK_RV)strtoul(name, NULL, 0);
}

/* Re-reads the control file when it changed. Called with the lock held. */
static void load_control(void) {
  if (!dir()) return;
  char path[4096];
  snprintf(path, sizeof path, "%s/control", dir());
  struct stat st;
  if (stat(path, &st) != 0) {
    if (control_size != -1) { nrules = 0; control_size = -1; }
    return;
  }
  if (st.st_ino == control_ino && st.st_size == control_size && st.st_mtim.tv_sec == control_mtime.tv_sec && st.st_mtim.tv_nsec == control_mtime.tv_nsec) return;
  control_size = st.st_size;
  control_ino = st.st_ino;
  control_mtime = st.st_mtim;
  nrules = 0;
  FILE *f = fopen(path, "r");
  if (!f) return;
  char line[256];
  while (nrules < MAX_RULES && fgets(line, sizeof line, f)) {
    char verb[16] = "", fn[40] = "", a[40] = "", b[40] = "";
    if (sscanf(line, "%15s %39s %39s %39s", verb, fn, a, b) < 1) continue;
    struct rule r = {0};
    snprintf(r.fn, sizeof r.fn, "%s", fn);
    if (strcmp(verb, "fail") == 0 && strcmp(a, "every") == 0) { r.kind = FAIL_EVERY; r.rv = ckr_value(b); }
    else if (strcmp(verb, "fail") == 0) { r.kind = FAIL_NTH; r.n = atol(a); r.rv = ckr_value(b); }
    else if (strcmp(verb, "delay") == 0) { r.kind = DELAY; r.n = atol(a); }
    else if (strcmp(verb, "hang") == 0) { r.kind = HANG; r.n = atol(a); r.nth = b[0] ? atol(b) : 1; }
    else if (strcmp(verb, "removed") == 0) r.kind = REMOVED;
    else if (strcmp(verb, "logout") == 0) r.kind = LOGOUT;
    else if (strcmp(verb, "nologin") == 0) r.kind = NOLOGIN;
    else if (strcmp(verb, "maxsessions") == 0) { r.kind = MAXSESSIONS; r.n = atol(fn); }
    else if (strcmp(verb, "maxkeybits") == 0) { r.kind = MAXKEYBITS; r.n = atol(fn); }
    else if (strcmp(verb, "tokenflags") == 0) { r.kind = TOKENFLAGS; r.n = strtol(fn, NULL, 16); }
    else if (strcmp(verb, "hidealwaysauth") == 0) r.kind = HIDEALWAYSAUTH;
    else if (strcmp(verb, "slotevents") == 0) r.kind = SLOTEVENTS;
    else continue;
    rules[nrules++] = r;
  }
  fclose(f);
}

/*
 * The counts file is mapped into memory: one fixed-width line a function ("C_Sign 42"
 * right-aligned in COUNT_LINE bytes), rewritten in place as a call is counted. No file I/O on
 * the call path, so the module can stand in front of a fast token, or a pool of slow ones,
 * without becoming the bottleneck; readers see each line as soon as it is written.
 */
#define COUNT_LINE 48
static char *count_map;
static int count_map_tried;

static void map_counts(void) {
  count_map_tried = 1;
  if (!dir()) return;
  char path[4096];
  snprintf(path, sizeof path, "%s/counts", dir());
  int fd = open(path, O_RDWR | O_CREAT, 0644);
  if (fd < 0) return;
  size_t size = NFN * COUNT_LINE;
  struct stat st;
  /* Never shrink a file another process may have mapped: that would SIGBUS it. */
  if (fstat(fd, &st) != 0 || ((size_t)st.st_size < size && ftruncate(fd, (off_t)size) != 0)) { close(fd); return; }
  void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (m == MAP_FAILED) return;
  count_map = m;
  for (size_t i = 0; i < NFN; i++) {
    char line[COUNT_LINE + 1];
    snprintf(line, sizeof line, "%-26s %20lu", names[i], counts[i]);
    line[COUNT_LINE - 1] = '\n';
    memcpy(count_map + i * COUNT_LINE, line, COUNT_LINE);
  }
}

/* Rewrites function idx's line. Called with the lock held. */
static void write_count(int idx) {
  if (!count_map_tried) map_counts();
  if (!count_map || idx < 0) return;
  char digits[24];
  snprintf(digits, sizeof digits, "%20lu", counts[idx]);
  memcpy(count_map + idx * COUNT_LINE + 27, digits, 20);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static int matches(const struct rule *r, const char *fn) { return strcmp(r->fn, "*") == 0 || strcmp(r->fn, fn) == 0; }

static int has_rule(enum kind k) {
  for (int i = 0; i < nrules; i++)
    if (rules[i].kind == k && !rules[i].spent) return 1;
  return 0;
}

/*
 * Runs before every intercepted call: counts it, applies latency and hangs, performs a
 * pending logout, and decides whether the call fails. Returns CKR_OK to go on to the real module.
 */
static CK_RV before(const char *fn) {
  long sleep_for = 0;
  CK_RV rv = CKR_OK;
  int do_logout = 0;
  pthread_mutex_lock(&lock);
  load_control();
  int idx = fn_index(fn);
  if (idx >= 0) counts[idx]++;
  for (int i = 0; i < nrules; i++) {
    struct rule *r = &rules[i];
    if (r->spent) continue;
    switch (r->kind) {
      case LOGOUT: r->spent = 1; do_logout = 1; break;
      case REMOVED:
        if (strcmp(fn, "C_Initialize") && strcmp(fn, "C_Finalize") && strcmp(fn, "C_GetSlotList") && strcmp(fn, "C_CloseSession")) rv = CKR_DEVICE_REMOVED;
        break;
      case DELAY: if (matches(r, fn)) sleep_for += r->n; break;
      case HANG: if (matches(r, fn) && --r->nth <= 0) { sleep_for += r->n; r->spent = 1; } break;
      case FAIL_EVERY: if (matches(r, fn) && rv == CKR_OK) rv = r->rv; break;
      case FAIL_NTH:
        if (matches(r, fn) && --r->n <= 0) { r->spent = 1; if (rv == CKR_OK) rv = r->rv; }
        break;
      case NOLOGIN: case MAXSESSIONS: case MAXKEYBITS: case TOKENFLAGS: case HIDEALWAYSAUTH: case SLOTEVENTS: break;
    }
  }
  write_count(idx);
  CK_SESSION_HANDLE s = last_session;
  pthread_mutex_unlock(&lock);
  if (do_logout && s != CK_INVALID_HANDLE) real->C_Logout(s);
  if (sleep_for > 0) sleep_ms(sleep_for);
  return rv;
}

#define GUARD(fn)                 \
  do {                            \
    CK_RV injected = before(fn);  \
    if (injected != CKR_OK) return injected; \
  } while (0)

static CK_RV f_Initialize(CK_VOID_PTR a) {
  GUARD("C_Initialize");
  return real->C_Initialize(a);
}
static CK_RV f_Finalize(CK_VOID_PTR a) {
  GUARD("C_Finalize");
  pthread_mutex_lock(&lock);
  finalizations++;
  pthread_mutex_unlock(&lock);
  return real->C_Finalize(a);
}

/* Counts a call that takes no rules. */
static void count_only(const char *fn) {
  pthread_mutex_lock(&lock);
  int idx = fn_index(fn);
  counts[idx]++;
  write_count(idx);
  pthread_mutex_unlock(&lock);
}

static CK_RV f_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved) {
  count_only("C_WaitForSlotEvent");
  pthread_mutex_lock(&lock);
  load_control();
  int emulate = has_rule(SLOTEVENTS);
  unsigned long since = finalizations;
  pthread_mutex_unlock(&lock);
  if (!emulate) return real->C_WaitForSlotEvent(flags, slot, reserved);
  for (;;) {
    pthread_mutex_lock(&lock);
    load_control();
    int gone = finalizations != since, removed = has_rule(REMOVED), changed = events_removed >= 0 && removed != events_removed;
    events_removed = removed;
    pthread_mutex_unlock(&lock);
    if (gone) return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (changed) {
      CK_SLOT_ID ids[8];
      CK_ULONG n = 8;
      *slot = real->C_GetSlotList(CK_FALSE, ids, &n) == CKR_OK && n > 0 ? ids[0] : 0;
      return CKR_OK;
    }
    if (flags & CKF_DONT_BLOCK) return CKR_NO_EVENT;
    sleep_ms(10);
  }
}

static CK_RV f_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
  GUARD("C_GetSlotList");
  pthread_mutex_lock(&lock);
  int removed = has_rule(REMOVED);
  pthread_mutex_unlock(&lock);
  if (removed && present) { *count = 0; return CKR_OK; }
  return real->C_GetSlotList(present, list, count);
}
static CK_RV f_GetTokenInfo(CK_SLOT_ID s, CK_TOKEN_INFO_PTR i) {
  GUARD("C_GetTokenInfo");
  CK_RV rv = real->C_GetTokenInfo(s, i);
  pthread_mutex_lock(&lock);
  for (int k = 0; k < nrules; k++) {
    if (rv == CKR_OK && rules[k].kind == MAXSESSIONS) i->ulMaxSessionCount = i->ulMaxRwSessionCount = (CK_ULONG)rules[k].n;
    if (rv == CKR_OK && rules[k].kind == TOKENFLAGS) i->flags |= (CK_FLAGS)rules[k].n;
  }
  pthread_mutex_unlock(&lock);
  return rv;
}
static CK_RV f_GetMechanismInfo(CK_SLOT_ID s, CK_MECHANISM_TYPE t, CK_MECHANISM_INFO_PTR i) {
  CK_RV rv = real->C_GetMechanismInfo(s, t, i);
  pthread_mutex_lock(&lock);
  for (int k = 0; k < nrules; k++) {
    if (rv == CKR_OK && rules[k].kind == MAXKEYBITS && i->ulMaxKeySize > (CK_ULONG)rules[k].n) i->ulMaxKeySize = (CK_ULONG)rules[k].n;
  }
  pthread_mutex_unlock(&lock);
  return rv;
}
static CK_RV f_GetMechanismList(CK_SLOT_ID s, CK_MECHANISM_TYPE_PTR l, CK_ULONG_PTR c) { GUARD("C_GetMechanismList"); return real->C_GetMechanismList(s, l, c); }

static CK_RV f_OpenSession(CK_SLOT_ID s, CK_FLAGS fl, CK_VOID_PTR app, CK_NOTIFY n, CK_SESSION_HANDLE_PTR h) {
  GUARD("C_OpenSession");
  CK_RV rv = real->C_OpenSession(s, fl, app, n, h);
  if (rv == CKR_OK) { pthread_mutex_lock(&lock); last_session = *h; pthread_mutex_unlock(&lock); }
  return rv;
}
static CK_RV f_CloseSession(CK_SESSION_HANDLE h) { GUARD("C_CloseSession"); return real->C_CloseSession(h); }
static CK_RV f_GetSessionInfo(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR i) { GUARD("C_GetSessionInfo"); return real->C_GetSessionInfo(h, i); }

static CK_RV f_Login(CK_SESSION_HANDLE h, CK_USER_TYPE u, CK_UTF8CHAR_PTR pin, CK_ULONG len) {
  GUARD(u == CKU_CONTEXT_SPECIFIC ? "C_LoginContextSpecific" : "C_Login");
  pthread_mutex_lock(&lock);
  int skip = has_rule(NOLOGIN);
  pthread_mutex_unlock(&lock);
  return skip ? CKR_OK : real->C_Login(h, u, pin, len);
}
static CK_RV f_Logout(CK_SESSION_HANDLE h) { GUARD("C_Logout"); return real->C_Logout(h); }
static CK_RV f_FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n) { GUARD("C_FindObjectsInit"); return real->C_FindObjectsInit(h, t, n); }
static CK_RV f_FindObjects(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR o, CK_ULONG m, CK_ULONG_PTR c) { GUARD("C_FindObjects"); return real->C_FindObjects(h, o, m, c); }
static CK_RV f_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { GUARD("C_SignInit"); return real->C_SignInit(h, m, k); }
/* A failed C_Sign or C_Verify ends the operation on a real token: run the real call, then report the fault. */
static CK_RV f_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR s, CK_ULONG_PTR sl) {
  CK_RV injected = before("C_Sign");
  CK_RV rv = real->C_Sign(h, d, dl, s, sl);
  return injected != CKR_OK ? injected : rv;
}
static CK_RV f_VerifyInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { GUARD("C_VerifyInit"); return real->C_VerifyInit(h, m, k); }
static CK_RV f_Verify(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR s, CK_ULONG sl) {
  CK_RV injected = before("C_Verify");
  CK_RV rv = real->C_Verify(h, d, dl, s, sl);
  return injected != CKR_OK ? injected : rv;
}
static CK_RV f_GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  GUARD("C_GetAttributeValue");
  pthread_mutex_lock(&lock);
  int hide = has_rule(HIDEALWAYSAUTH);
  pthread_mutex_unlock(&lock);
  if (hide && n == 1 && t[0].type == CKA_ALWAYS_AUTHENTICATE) {
    t[0].ulValueLen = CK_UNAVAILABLE_INFORMATION;
    return CKR_ATTRIBUTE_TYPE_INVALID;
  }
  return real->C_GetAttributeValue(h, o, t, n);
}

static CK_RV f_GenerateKeyPair(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pub, CK_ULONG npub, CK_ATTRIBUTE_PTR priv, CK_ULONG npriv,
                                CK_OBJECT_HANDLE_PTR hpub, CK_OBJECT_HANDLE_PTR hpriv) {
  GUARD("C_GenerateKeyPair");
  return real->C_GenerateKeyPair(h, m, pub, npub, priv, npriv, hpub, hpriv);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
  if (!out) return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&lock);
  if (!real) {
    const char *target = getenv("FAULT_PKCS11_TARGET");
    void *lib = dlopen(target ? target : "/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
    CK_C_GetFunctionList get = lib ? (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList") : NULL;
    CK_FUNCTION_LIST_PTR list = NULL;
    if (!get || get(&list) != CKR_OK) { pthread_mutex_unlock(&lock); return CKR_GENERAL_ERROR; }
    real = list;
    fault_list = *real; /* everything not intercepted goes straight through */
    fault_list.C_GetFunctionList = C_GetFunctionList;
    fault_list.C_Initialize = f_Initialize;
    fault_list.C_Finalize = f_Finalize;
    fault_list.C_GetSlotList = f_GetSlotList;
    fault_list.C_GetTokenInfo = f_GetTokenInfo;
    fault_list.C_GetMechanismList = f_GetMechanismList;
    fault_list.C_GetMechanismInfo = f_GetMechanismInfo;
    fault_list.C_OpenSession = f_OpenSession;
    fault_list.C_CloseSession = f_CloseSession;
    fault_list.C_GetSessionInfo = f_GetSessionInfo;
    fault_list.C_Login = f_Login;
    fault_list.C_Logout = f_Logout;
    fault_list.C_FindObjectsInit = f_FindObjectsInit;
    fault_list.C_FindObjects = f_FindObjects;
    fault_list.C_SignInit = f_SignInit;
    fault_list.C_Sign = f_Sign;
    fault_list.C_VerifyInit = f_VerifyInit;
    fault_list.C_Verify = f_Verify;
    fault_list.C_GetAttributeValue = f_GetAttributeValue;
    fault_list.C_GenerateKeyPair = f_GenerateKeyPair;
    fault_list.C_WaitForSlotEvent = f_WaitForSlotEvent;
  }
  pthread_mutex_unlock(&lock);
  *out = &fault_list;
  return CKR_OK;
}
