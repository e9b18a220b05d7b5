// Command ftpguard is an authenticating FTP front-proxy: it listens in front
// of an FTP daemon, counts every password guess from the daemon's own
// replies, and bans guessing addresses by itself — no logs, no DNS.
//
// Usage:
//
//	ftpguard [run] -config PATH        serve (the default command)
//	ftpguard check -config PATH        validate the config file and exit
//	ftpguard bans list                 list the bans in force   ⎫ talk to the admin
//	ftpguard bans add IP|CIDR [DUR]    ban                      ⎪ endpoint ([admin]
//	ftpguard bans del IP|CIDR          lift a ban               ⎬ listen of -config,
//	ftpguard status                    health, counters, bans   ⎪ or -admin ADDR)
//	ftpguard reload                    re-read the config       ⎭
//	ftpguard version                   print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/limiter/filestore"
	"github.com/ftpguard/ftpguard/limiter/redisstore"
	"github.com/ftpguard/ftpguard/proxy"
)

// version is set at build time with -ldflags "-X main.version=…"; else the
// module version from the build info is used.
var version = ""

const defaultConfigPath = "/etc/ftpguard/ftpguard.toml"

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run", "check":
		fs := flag.NewFlagSet("ftpguard "+cmd, flag.ContinueOnError)
		fs.SetOutput(stderr)
		path := fs.String("config", defaultConfigPath, "path of the TOML config file")
		if err := fs.Parse(args); err != nil {
			return 2
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "ftpguard %s: unexpected argument %q\n", cmd, fs.Arg(0))
			return 2
		}
		st, err := LoadConfig(*path)
		if err != nil {
			fmt.Fprintf(stderr, "ftpguard: invalid config:\n%v\n", err)
			return 1
		}
		if cmd == "check" {
			admin := st.File.Admin.Listen
			if admin == "" {
				admin = "off"
			}
			fmt.Fprintf(stdout, "%s: OK (listen %s, backend %s, admin %s, mode %s)\n", *path, st.Listen, st.Proxy.Backend,
				admin, st.File.Mode)
			return 0
		}
		if err := run(*path, st, stderr); err != nil {
			fmt.Fprintf(stderr, "ftpguard: %v\n", err)
			return 1
		}
		return 0
	case "bans", "status", "reload":
		return runClient(cmd, args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "ftpguard", versionString())
		return 0
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, "usage: ftpguard [run|check] -config PATH | ftpguard version")
		fmt.Fprint(stdout, cliUsage)
		fmt.Fprintln(stdout, "  -config PATH, -admin ADDR, -token-file PATH, -timeout DUR, -json, -reason TEXT (bans add)")
		return 0
	default:
		fmt.Fprintf(stderr, "ftpguard: unknown command %q (want run, check, bans, status, reload or version)\n", cmd)
		return 2
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// run serves until SIGTERM/SIGINT, then drains. SIGHUP reloads limits,
// timeouts and the log level from path without dropping sessions.
func run(path string, st *Settings, stderr io.Writer) error {
	st.installCert()
	level := new(slog.LevelVar)
	level.Set(st.LogLevel)
	events := new(eventRing)
	log := slog.New(&ringHandler{inner: newLogger(stderr, st.File.Log.Format, level).Handler(), ring: events})

	store, err := openStore(st.File.Store, log)
	if err != nil {
		return err
	}
	defer store.Close() // after the limiter's: state is flushed, the file unlocked
	lim, err := limiter.New(st.Limiter, store)
	if err != nil {
		return err
	}
	defer lim.Close()
	if err := lim.LastStoreError(); err != nil {
		switch {
		case st.File.Store.Kind == "redis":
			// Redis unreachable at start: decide locally until it is back.
			log.Error("shared store unreachable at start; deciding locally until it is back", "err", err)
		case errors.Is(err, filestore.ErrCorrupt) && st.File.Store.OnCorrupt == "reset":
			log.Error("state file has bad records; starting with the bans that could be read", "err", err)
		default:
			return fmt.Errorf("%w\nftpguard refuses to start rather than forget bans: repair or move the state file, or set [store] on_corrupt = \"reset\"", err)
		}
	}
	srv, err := proxy.New(st.Proxy, lim, log)
	if err != nil {
		return err
	}
	users, err := limiter.NewUsers(st.Users)
	if err != nil {
		return err
	}
	if sh := lim.SharedUsers(); sh != nil {
		users.SetShared(sh) // one budget a username for the whole fleet
	}
	srv.SetUsers(users)
	d := &daemon{path: path, lim: lim, users: users, srv: srv, level: level, log: log, events: events, start: time.Now()}
	d.st.Store(st)
	d.fw = newFirewall(st.Firewall, st.Proxy.Observe, log)
	d.m = newMetrics(lim, users, d.fw, d.mode)
	srv.SetObserver(d.m)
	lim.SetBanHook(d.onBanChange)
	fwCtx, stopFirewall := context.WithCancel(context.Background())
	fwDone := make(chan struct{})
	go func() { defer close(fwDone); d.fw.run(fwCtx, lim.Bans(time.Now())) }()
	defer func() { stopFirewall(); <-fwDone }()

	aln, err := listenAdmin(st.Admin)
	if err != nil {
		return err
	}
	if aln != nil {
		admin := d.newAdminServer()
		go func() {
			if err := admin.Serve(aln); !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin listener failed; the proxy goes on", "err", err)
			}
		}()
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			admin.Shutdown(ctx)
			cancel()
		}()
		log.Info("admin listening", "admin", aln.Addr().String(), "token", st.Admin.Token != "", "pprof", st.Admin.Pprof)
	}

	ln, err := net.Listen("tcp", st.Listen)
	if err != nil {
		return err
	}
	log.Info("listening", "listen", ln.Addr().String(), "backend", st.Proxy.Backend, "version", versionString(),
		"tls", st.File.TLS.Mode)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if st.File.TLS.Mode == "implicit" {
		iln, err := net.Listen("tcp", st.File.TLS.ImplicitListen)
		if err != nil {
			srv.Close()
			return err
		}
		log.Info("listening", "implicit_tls", iln.Addr().String())
		go func() { errc <- srv.ServeImplicitTLS(iln) }()
	}

	for {
		select {
		case err := <-errc:
			if errors.Is(err, proxy.ErrServerClosed) {
				return nil
			}
			return err
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				d.reload()
				continue
			}
			drain := d.settings().File.Sessions.DrainTimeout
			log.Info("draining", "signal", sig.String(), "sessions", srv.ActiveSessions(), "drain_timeout", drain)
			ctx, cancel := context.WithTimeout(context.Background(), drain)
			err := srv.Shutdown(ctx)
			cancel()
			if err != nil {
				log.Warn("drain timeout; closed remaining sessions", "err", err)
			}
			log.Info("stopped")
			return nil
		}
	}
}

// openStore opens the ban store the config names. A corrupt state file
// stops the start (bans must not be forgotten silently) unless on_corrupt
// is "reset": then it is moved aside, logged, and a new one is made.
func openStore(c StoreConfig, log *slog.Logger) (limiter.Store, error) {
	switch c.Kind {
	case "file":
		fs, err := filestore.Open(c.Path, filestore.Options{})
		if errors.Is(err, filestore.ErrCorrupt) && c.OnCorrupt == "reset" {
			moved, merr := filestore.Reset(c.Path)
			if merr != nil {
				return nil, fmt.Errorf("%w (and moving it aside failed: %v)", err, merr)
			}
			log.Error("state file corrupt; moved aside, starting with no bans", "err", err, "moved_to", moved)
			fs, err = filestore.Open(c.Path, filestore.Options{})
		}
		if errors.Is(err, filestore.ErrCorrupt) {
			return nil, fmt.Errorf("%w\nftpguard refuses to start rather than forget bans: repair or move the file, or set [store] on_corrupt = \"reset\"", err)
		}
		if err != nil {
			return nil, err
		}
		log.Info("state file", "path", fs.Path())
		return fs, nil
	case "redis":
		return redisstore.New(redisstore.Options{URL: c.URL, Prefix: c.Prefix, Timeout: c.Timeout, Logger: log})
	default:
		return limiter.NewMemoryStore(), nil
	}
}

func newLogger(w io.Writer, format string, level slog.Leveler) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
