/*
 * faultfs - a tiny fault-injecting FUSE filesystem for Bynar's tests.
 *
 *   faultfs IMAGE MOUNTPOINT [-f] [-o disk_direct_io] [-o verbose] [fuse options]
 *
 * MOUNTPOINT then holds exactly two files:
 *
 *   disk     a passthrough of IMAGE (same size); put a loop device on it
 *            (losetup --find --show MOUNTPOINT/disk) to get a block device
 *            whose I/O errors are REAL kernel I/O errors.
 *   control  write commands to it (one per line), read it to see the rules:
 *              fail START COUNT [ERRNO]         sectors [START, START+COUNT) fail reads+writes
 *              fail-reads START COUNT [ERRNO]   ... only reads
 *              fail-writes START COUNT [ERRNO]  ... only writes
 *              delay MS                         every disk I/O sleeps MS ms first (0 = off)
 *              vanish [ERRNO]                   every further disk operation fails
 *              clear                            remove all rules (also delay and vanish)
 *            Sectors are 512 bytes. ERRNO defaults to EIO. Lines that are
 *            empty or start with '#' are ignored, and so is text after '#',
 *            so what a read returns can be written back. A write with any
 *            bad line changes nothing and fails with EINVAL (message on
 *            stderr).
 *
 * See README.md beside this file for what the kernel makes of it.
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE

#include <fuse.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define SECTOR ((uint64_t)512)
#define MAX_RULES 1024
#define MAX_DELAY_MS 600000ULL

enum { R_READ = 1, R_WRITE = 2, R_BOTH = 3, R_SYNC = 4 };

struct rule {
	uint64_t start; /* first sector */
	uint64_t count; /* number of sectors, > 0 */
	int which;      /* R_READ | R_WRITE */
	int err;        /* positive errno */
	uint64_t hits;  /* I/O requests this rule failed */
};

static struct {
	char *image;
	int fd;
	int disk_direct_io;
	int verbose;

	pthread_mutex_t lock;
	struct rule rules[MAX_RULES];
	int nrules;
	unsigned delay_ms;
	int vanished; /* errno, 0 = present */
	uint64_t nreads, nwrites, nsyncs, nfailed;
} g = { .fd = -1, .lock = PTHREAD_MUTEX_INITIALIZER };

static const char DISK[] = "/disk";
static const char CONTROL[] = "/control";

/* ---- errno names accepted on the control file ---- */

static const struct {
	const char *name;
	int err;
} errnames[] = {
	{ "EIO", EIO },         { "ENXIO", ENXIO },         { "ENODEV", ENODEV },
	{ "ENODATA", ENODATA }, { "ENOSPC", ENOSPC },       { "EREMOTEIO", EREMOTEIO },
	{ "ENOLINK", ENOLINK }, { "ETIMEDOUT", ETIMEDOUT }, { "EILSEQ", EILSEQ },
	{ "EROFS", EROFS },     { "EPERM", EPERM },         { "EAGAIN", EAGAIN },
	{ "EBUSY", EBUSY },     { "ENOMEM", ENOMEM },
};

static const char *errname(int err)
{
	for (size_t i = 0; i < sizeof errnames / sizeof errnames[0]; i++)
		if (errnames[i].err == err)
			return errnames[i].name;
	return NULL;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	if (!s || !*s || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		return -1;
	*out = v;
	return 0;
}

static int parse_errno(const char *s, int *out)
{
	for (size_t i = 0; i < sizeof errnames / sizeof errnames[0]; i++)
		if (strcasecmp(s, errnames[i].name) == 0) {
			*out = errnames[i].err;
			return 0;
		}
	uint64_t v;
	if (parse_u64(s, &v) == 0 && v > 0 && v < 4096) {
		*out = (int)v;
		return 0;
	}
	return -1;
}

/* ---- the rules ---- */

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/*
 * Called before every operation on disk. which: R_READ, R_WRITE, R_SYNC
 * (fsync) or 0 (stat, open). Sleeps the configured delay (I/O only), then
 * returns 0 or the positive errno the operation must fail with. len == 0
 * means "no sector range": only vanish applies.
 */
static int disk_gate(int which, uint64_t off, uint64_t len)
{
	if (which) { /* I/O (read, write, fallocate, fsync) is delayed; stat/open are not */
		pthread_mutex_lock(&g.lock);
		unsigned delay = g.delay_ms;
		pthread_mutex_unlock(&g.lock);
		if (delay)
			sleep_ms(delay);
	}

	int err = 0;
	pthread_mutex_lock(&g.lock);
	if (which == R_READ)
		g.nreads++;
	else if (which == R_WRITE)
		g.nwrites++;
	if (g.vanished) {
		err = g.vanished;
	} else if (len) {
		uint64_t first = off / SECTOR;
		uint64_t last = (off + len - 1) / SECTOR;
		for (int i = 0; i < g.nrules; i++) {
			struct rule *r = &g.rules[i];
			if (!(r->which & which))
				continue;
			if (first < r->start + r->count && last >= r->start) {
				r->hits++;
				if (!err)
					err = r->err;
			}
		}
	}
	else if (which == R_SYNC)
		g.nsyncs++;
	if (err && which)
		g.nfailed++;
	pthread_mutex_unlock(&g.lock);

	if (err && g.verbose)
		fprintf(stderr, "faultfs: injected %s on %s off=%" PRIu64 " len=%" PRIu64
				" (sectors %" PRIu64 "+%" PRIu64 ")\n",
			errname(err) ? errname(err) : "error",
			which == R_READ ? "read" : which == R_WRITE ? "write" : which == R_SYNC ? "fsync" : "op",
			off, len,
			off / SECTOR, (len + SECTOR - 1) / SECTOR);
	return err;
}

/* The text a read of control returns; caller frees. */
static char *render_rules(size_t *lenp)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	struct stat st;
	long long size = fstat(g.fd, &st) == 0 ? (long long)st.st_size : -1;

	pthread_mutex_lock(&g.lock);
	fprintf(f, "# faultfs image=%s size=%lld bytes (%lld sectors of 512)\n", g.image, size,
		size >= 0 ? size / 512 : -1);
	fprintf(f, "# io reads=%" PRIu64 " writes=%" PRIu64 " fsyncs=%" PRIu64 " failed=%" PRIu64 "\n",
		g.nreads, g.nwrites, g.nsyncs, g.nfailed);
	fprintf(f, "delay %u\n", g.delay_ms);
	for (int i = 0; i < g.nrules; i++) {
		struct rule *r = &g.rules[i];
		const char *cmd = r->which == R_BOTH ? "fail" : r->which == R_READ ? "fail-reads"
										 : "fail-writes";
		const char *en = errname(r->err);
		if (en)
			fprintf(f, "%s %" PRIu64 " %" PRIu64 " %s # hits=%" PRIu64 "\n", cmd, r->start,
				r->count, en, r->hits);
		else
			fprintf(f, "%s %" PRIu64 " %" PRIu64 " %d # hits=%" PRIu64 "\n", cmd, r->start,
				r->count, r->err, r->hits);
	}
	if (g.vanished) {
		const char *en = errname(g.vanished);
		if (en)
			fprintf(f, "vanish %s\n", en);
		else
			fprintf(f, "vanish %d\n", g.vanished);
	}
	pthread_mutex_unlock(&g.lock);

	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	*lenp = len;
	return buf;
}

/* ---- parsing control writes ---- */

enum cmd_kind { C_FAIL, C_DELAY, C_VANISH, C_CLEAR };

struct cmd {
	enum cmd_kind kind;
	struct rule rule;
	unsigned delay;
	int err;
};

static void complain(int lineno, const char *line, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "faultfs: control: line %d: ", lineno);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, ": \"%s\" (commands: fail|fail-reads|fail-writes START COUNT [ERRNO], "
			"delay MS, vanish [ERRNO], clear)\n",
		line);
}

/* Parses one line (modified in place). Returns 1 = command, 0 = blank, -1 = bad. */
static int parse_line(char *line, int lineno, struct cmd *c)
{
	char *hash = strchr(line, '#');
	if (hash)
		*hash = '\0';
	char shown[160];
	snprintf(shown, sizeof shown, "%s", line);

	char *save = NULL, *tok[8];
	int n = 0;
	for (char *t = strtok_r(line, " \t\r", &save); t; t = strtok_r(NULL, " \t\r", &save)) {
		if (n == 8) {
			complain(lineno, shown, "too many words");
			return -1;
		}
		tok[n++] = t;
	}
	if (n == 0)
		return 0;

	memset(c, 0, sizeof *c);
	const char *w = tok[0];
	if (!strcmp(w, "fail") || !strcmp(w, "fail-reads") || !strcmp(w, "fail-writes")) {
		c->kind = C_FAIL;
		c->rule.which = !strcmp(w, "fail") ? R_BOTH : !strcmp(w, "fail-reads") ? R_READ : R_WRITE;
		c->rule.err = EIO;
		if (n < 3 || n > 4) {
			complain(lineno, shown, "%s wants START COUNT [ERRNO]", w);
			return -1;
		}
		if (parse_u64(tok[1], &c->rule.start) || parse_u64(tok[2], &c->rule.count)) {
			complain(lineno, shown, "START and COUNT must be decimal sector numbers");
			return -1;
		}
		if (c->rule.count == 0) {
			complain(lineno, shown, "COUNT must be > 0");
			return -1;
		}
		if (c->rule.start > (UINT64_MAX / SECTOR) ||
		    c->rule.count > (UINT64_MAX / SECTOR) - c->rule.start) {
			complain(lineno, shown, "range too large");
			return -1;
		}
		if (n == 4 && parse_errno(tok[3], &c->rule.err)) {
			complain(lineno, shown, "unknown ERRNO '%s'", tok[3]);
			return -1;
		}
		return 1;
	}
	if (!strcmp(w, "delay")) {
		uint64_t ms;
		c->kind = C_DELAY;
		if (n != 2 || parse_u64(tok[1], &ms) || ms > MAX_DELAY_MS) {
			complain(lineno, shown, "delay wants MS (0..%llu)", MAX_DELAY_MS);
			return -1;
		}
		c->delay = (unsigned)ms;
		return 1;
	}
	if (!strcmp(w, "vanish")) {
		c->kind = C_VANISH;
		c->err = EIO;
		if (n > 2 || (n == 2 && parse_errno(tok[1], &c->err))) {
			complain(lineno, shown, "vanish wants [ERRNO]");
			return -1;
		}
		return 1;
	}
	if (!strcmp(w, "clear")) {
		c->kind = C_CLEAR;
		if (n != 1) {
			complain(lineno, shown, "clear takes no arguments");
			return -1;
		}
		return 1;
	}
	complain(lineno, shown, "unknown command '%s'", w);
	return -1;
}

static int control_write(const char *data, size_t size)
{
	char *text = malloc(size + 1);
	if (!text)
		return -ENOMEM;
	memcpy(text, data, size);
	text[size] = '\0';
	if (memchr(data, '\0', size)) {
		fprintf(stderr, "faultfs: control: NUL byte in command\n");
		free(text);
		return -EINVAL;
	}

	/* Validate every line first, so a bad write changes nothing. */
	size_t cap = 16, ncmds = 0;
	struct cmd *cmds = malloc(cap * sizeof *cmds);
	int rc = 0, lineno = 0;
	if (!cmds) {
		free(text);
		return -ENOMEM;
	}
	/* Walk line by line (not strtok) to keep line numbers for messages. */
	for (char *p = text; p && rc == 0;) {
		char *nl = strchr(p, '\n');
		if (nl)
			*nl = '\0';
		lineno++;
		struct cmd c;
		int r = parse_line(p, lineno, &c);
		if (r < 0) {
			rc = -EINVAL;
		} else if (r > 0) {
			if (ncmds == cap) {
				struct cmd *nc = realloc(cmds, 2 * cap * sizeof *cmds);
				if (!nc) {
					rc = -ENOMEM;
					break;
				}
				cmds = nc;
				cap *= 2;
			}
			cmds[ncmds++] = c;
		}
		p = nl ? nl + 1 : NULL;
	}

	if (rc == 0) {
		pthread_mutex_lock(&g.lock);
		/* Rules after the last clear must fit. */
		int after_clear = g.nrules;
		for (size_t i = 0; i < ncmds; i++) {
			if (cmds[i].kind == C_CLEAR)
				after_clear = 0;
			else if (cmds[i].kind == C_FAIL)
				after_clear++;
		}
		if (after_clear > MAX_RULES) {
			fprintf(stderr, "faultfs: control: too many rules (max %d)\n", MAX_RULES);
			rc = -ENOSPC;
		} else {
			for (size_t i = 0; i < ncmds; i++) {
				struct cmd *c = &cmds[i];
				switch (c->kind) {
				case C_FAIL:
					g.rules[g.nrules++] = c->rule;
					break;
				case C_DELAY:
					g.delay_ms = c->delay;
					break;
				case C_VANISH:
					g.vanished = c->err;
					break;
				case C_CLEAR:
					g.nrules = 0;
					g.delay_ms = 0;
					g.vanished = 0;
					break;
				}
			}
		}
		pthread_mutex_unlock(&g.lock);
		if (rc == 0 && g.verbose)
			fprintf(stderr, "faultfs: control: applied %zu command(s)\n", ncmds);
	}
	free(cmds);
	free(text);
	return rc ? rc : (int)size;
}

/* ---- FUSE operations ---- */

static void *ffs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	/* Sizes and rules change underneath the kernel: never cache attributes. */
	cfg->attr_timeout = 0;
	cfg->entry_timeout = 0;
	cfg->negative_timeout = 0;
	cfg->kernel_cache = 0;
	cfg->auto_cache = 0;
	cfg->use_ino = 1;
	return NULL;
}

static int ffs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	(void)fi;
	memset(st, 0, sizeof *st);
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_atime = st->st_mtime = st->st_ctime = time(NULL);
	if (!strcmp(path, "/")) {
		st->st_ino = 1;
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		return 0;
	}
	if (!strcmp(path, DISK)) {
		struct stat img;
		int err = disk_gate(0, 0, 0); /* after vanish even stat(disk) fails */
		if (err)
			return -err;
		if (fstat(g.fd, &img) == -1)
			return -errno;
		st->st_ino = 2;
		st->st_mode = S_IFREG | 0600;
		st->st_nlink = 1;
		st->st_size = img.st_size;
		st->st_blocks = img.st_blocks;
		st->st_blksize = 4096;
		st->st_mtime = img.st_mtime;
		st->st_ctime = img.st_ctime;
		return 0;
	}
	if (!strcmp(path, CONTROL)) {
		size_t len = 0;
		char *t = render_rules(&len);
		free(t);
		st->st_ino = 3;
		st->st_mode = S_IFREG | 0600;
		st->st_nlink = 1;
		st->st_size = (off_t)len;
		return 0;
	}
	return -ENOENT;
}

static int ffs_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off,
		       struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	(void)off;
	(void)fi;
	(void)flags;
	if (strcmp(path, "/"))
		return -ENOTDIR;
	filler(buf, ".", NULL, 0, 0);
	filler(buf, "..", NULL, 0, 0);
	filler(buf, "disk", NULL, 0, 0);
	filler(buf, "control", NULL, 0, 0);
	return 0;
}

static int ffs_open(const char *path, struct fuse_file_info *fi)
{
	if (!strcmp(path, DISK)) {
		int err = disk_gate(0, 0, 0);
		if (err)
			return -err;
		/*
		 * Page-cache (non direct_io) by default: the loop driver's buffered
		 * mode works on it. -o disk_direct_io makes the kernel bypass the
		 * page cache for this file (every loop request reaches us).
		 */
		fi->direct_io = g.disk_direct_io ? 1 : 0;
		fi->keep_cache = 0;
		return 0;
	}
	if (!strcmp(path, CONTROL)) {
		/* Always ask us: the content changes with every command. */
		fi->direct_io = 1;
		fi->keep_cache = 0;
		return 0;
	}
	return -ENOENT;
}

static int ffs_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	if (!strcmp(path, DISK)) {
		int err = disk_gate(R_READ, (uint64_t)off, size);
		if (err)
			return -err;
		size_t done = 0;
		while (done < size) {
			ssize_t n = pread(g.fd, buf + done, size - done, off + (off_t)done);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				return done ? (int)done : -errno;
			}
			if (n == 0)
				break;
			done += (size_t)n;
		}
		return (int)done;
	}
	if (!strcmp(path, CONTROL)) {
		size_t len = 0;
		char *t = render_rules(&len);
		if (!t)
			return -ENOMEM;
		size_t n = 0;
		if ((size_t)off < len) {
			n = len - (size_t)off;
			if (n > size)
				n = size;
			memcpy(buf, t + off, n);
		}
		free(t);
		return (int)n;
	}
	return -ENOENT;
}

static int ffs_write(const char *path, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)fi;
	if (!strcmp(path, DISK)) {
		int err = disk_gate(R_WRITE, (uint64_t)off, size);
		if (err)
			return -err;
		size_t done = 0;
		while (done < size) {
			ssize_t n = pwrite(g.fd, buf + done, size - done, off + (off_t)done);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				return done ? (int)done : -errno;
			}
			done += (size_t)n;
		}
		return (int)done;
	}
	if (!strcmp(path, CONTROL))
		return control_write(buf, size); /* offset ignored: every write is commands */
	return -ENOENT;
}

static int ffs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	(void)fi;
	(void)size;
	if (!strcmp(path, CONTROL))
		return 0; /* "echo cmd > control" opens with O_TRUNC: accept, do nothing */
	if (!strcmp(path, DISK))
		return -EPERM; /* a disk does not change size */
	return -ENOENT;
}

static int ffs_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	(void)fi;
	if (strcmp(path, DISK))
		return 0;
	int err = disk_gate(R_SYNC, 0, 0);
	if (err)
		return -err;
	if ((datasync ? fdatasync(g.fd) : fsync(g.fd)) == -1)
		return -errno;
	return 0;
}

static int ffs_flush(const char *path, struct fuse_file_info *fi)
{
	(void)fi;
	(void)path;
	return 0; /* close() must not fail because of rules, or losetup -d would */
}

static int ffs_fallocate(const char *path, int mode, off_t off, off_t len,
			 struct fuse_file_info *fi)
{
	(void)fi;
	if (strcmp(path, DISK))
		return -EOPNOTSUPP;
	/* The loop driver turns DISCARD / WRITE_ZEROES into fallocate: count them as writes. */
	int err = disk_gate(R_WRITE, (uint64_t)off, (uint64_t)len);
	if (err)
		return -err;
	if (fallocate(g.fd, mode, off, len) == -1)
		return -errno;
	return 0;
}

static int ffs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	(void)path;
	(void)mode;
	(void)fi;
	return 0;
}

static int ffs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	(void)path;
	(void)tv;
	(void)fi;
	return 0;
}

static const struct fuse_operations ops = {
	.init = ffs_init,
	.getattr = ffs_getattr,
	.readdir = ffs_readdir,
	.open = ffs_open,
	.read = ffs_read,
	.write = ffs_write,
	.truncate = ffs_truncate,
	.fsync = ffs_fsync,
	.flush = ffs_flush,
	.fallocate = ffs_fallocate,
	.chmod = ffs_chmod,
	.utimens = ffs_utimens,
};

/* ---- command line ---- */

struct opts {
	int disk_direct_io;
	int verbose;
	int help;
};

static const struct fuse_opt opt_spec[] = {
	{ "disk_direct_io", offsetof(struct opts, disk_direct_io), 1 },
	{ "verbose", offsetof(struct opts, verbose), 1 },
	{ "-h", offsetof(struct opts, help), 1 },
	{ "--help", offsetof(struct opts, help), 1 },
	FUSE_OPT_END,
};

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	(void)data;
	(void)outargs;
	if (key == FUSE_OPT_KEY_NONOPT && !g.image) {
		g.image = strdup(arg);
		return 0; /* consumed: the rest (mountpoint) goes to fuse */
	}
	return 1;
}

static void usage(const char *prog)
{
	fprintf(stderr,
		"usage: %s IMAGE MOUNTPOINT [-f] [-d] [-s] [-o disk_direct_io] [-o verbose] "
		"[-o fuse-option,...]\n"
		"Mounts MOUNTPOINT/disk (passthrough of IMAGE) and MOUNTPOINT/control.\n"
		"control commands: fail|fail-reads|fail-writes START COUNT [ERRNO], delay MS,\n"
		"                  vanish [ERRNO], clear   (sectors of 512 bytes, ERRNO default EIO)\n",
		prog);
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct opts o = { 0 };

	if (fuse_opt_parse(&args, &o, opt_spec, opt_proc) == -1)
		return 2;
	if (o.help || !g.image) {
		usage(argv[0]);
		fuse_opt_free_args(&args);
		return o.help ? 0 : 2;
	}
	g.disk_direct_io = o.disk_direct_io;
	g.verbose = o.verbose;

	char *abs = realpath(g.image, NULL);
	if (!abs) {
		fprintf(stderr, "faultfs: %s: %s\n", g.image, strerror(errno));
		return 1;
	}
	free(g.image);
	g.image = abs;
	g.fd = open(g.image, O_RDWR | O_CLOEXEC);
	if (g.fd == -1) {
		fprintf(stderr, "faultfs: open %s read-write: %s\n", g.image, strerror(errno));
		return 1;
	}
	struct stat st;
	if (fstat(g.fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		fprintf(stderr, "faultfs: %s: not a regular file\n", g.image);
		return 1;
	}
	if (st.st_size % (off_t)SECTOR)
		fprintf(stderr, "faultfs: warning: %s size %lld is not a multiple of 512\n", g.image,
			(long long)st.st_size);

	/*
	 * libfuse 3.14 prints "Ignoring invalid max threads value 4294967295"
	 * when max_idle_threads is left unset (its default is -1); give it the
	 * old default of 10, which the user's own -o max_idle_threads=N (parsed
	 * later) still overrides.
	 */
	fuse_opt_insert_arg(&args, 1, "-omax_idle_threads=10");

	int rc = fuse_main(args.argc, args.argv, &ops, NULL);
	fuse_opt_free_args(&args);
	close(g.fd);
	free(g.image);
	return rc;
}
