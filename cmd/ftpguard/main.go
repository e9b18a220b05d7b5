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
//	ftpguard reload                    re-read the config       ⎪
//	ftpguard top [-n 1]                live view (rates, bans)  ⎭
//	ftpguard version                   print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/ftpguard/ftpguard/admin"
	"github.com/ftpguard/ftpguard/geo"
	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/limiter/filestore"
	"github.com/ftpguard/ftpguard/limiter/stores"
	"github.com/ftpguard/ftpguard/nftnat"
	"github.com/ftpguard/ftpguard/proxy"
)

// version is set at build time with -ldflags "-X main.version=…"; else the
// module version from the build info is used.
var version = ""

const defaultConfigPath = "/etc/ftpguard/ftpguard.toml"

// settleTimeout bounds the wait, after drain_timeout, for the sessions
// closed by the drain to settle their guesses in flight (a failure, a ban
// written to the store) before the store is closed.
const settleTimeout = 10 * time.Second

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
			g, err := geo.Open(st.Geo, st.Limiter) // the databases must open too
			if err != nil {
				fmt.Fprintf(stderr, "ftpguard: invalid config:\n%s: %v\n", *path, err)
				return 1
			}
			g.Close()
			adm := st.File.Admin.Listen
			if adm == "" {
				adm = "off"
			}
			fmt.Fprintf(stdout, "%s: OK (listen %s, backend %s, admin %s, mode %s)\n", *path, st.Proxy.Listen, st.Proxy.Backend,
				adm, st.File.Mode)
			fmt.Fprint(stdout, dataPathReport(st, nftnat.Probe))
			return 0
		}
		if err := run(*path, st, stderr); err != nil {
			fmt.Fprintf(stderr, "ftpguard: %v\n", err)
			return 1
		}
		return 0
	case "bans", "users", "status", "reload":
		return admin.RunClient(cmd, args, stdout, stderr, defaultConfigPath)
	case "top":
		return admin.RunTop(args, stdout, stderr, defaultConfigPath)
	case "version":
		fmt.Fprintln(stdout, "ftpguard", versionString())
		return 0
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, "usage: ftpguard [run|check] -config PATH | ftpguard version")
		fmt.Fprint(stdout, admin.ClientUsage)
		fmt.Fprintln(stdout, "  -config PATH, -admin ADDR, -token-file PATH, -timeout DUR, -json, -reason TEXT (bans add)")
		return 0
	default:
		fmt.Fprintf(stderr, "ftpguard: unknown command %q (want run, check, bans, users, status, reload, top or version)\n", cmd)
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
	level := new(slog.LevelVar)
	level.Set(st.LogLevel)
	events := new(admin.EventRing)
	log := slog.New(admin.NewLogHandler(newLogger(logWriter(stderr), st.File.Log.Format, level).Handler(), events))
	slack := newTimerSlack()
	slack.apply(st.File.TimerSlack, log)

	sc := st.File.Store
	sc.AttemptTTL = stores.AttemptTTLFor(st.Proxy.LoginTimeout) // a guess in flight keeps its place
	sc.MaxBans = st.Limiter.MaxTracked                          // the file keeps no more bans than the limiter
	if sc.MaxBans == 0 {
		sc.MaxBans = limiter.DefaultMaxTracked
	}
	sc.PruneBefore = time.Now() // records forgotten by now are dropped before loading
	store, err := stores.Open(sc, log)
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
	d, err := newDaemon(path, st, lim, log, level, events)
	if err != nil {
		return err
	}
	d.slack = slack
	defer d.cs.Stop()
	srv := d.srv
	if dp := openDataPath(st, log); dp != nil {
		srv.SetDataPath(dp)
		defer closeDataPath(dp, log) // after the drain: the table's mappings end with it
	}
	defer d.geo.Close()
	fwCtx, stopFirewall := context.WithCancel(context.Background())
	fwDone := make(chan struct{})
	go func() { defer close(fwDone); d.fw.Run(fwCtx, lim.Bans(time.Now())) }()
	defer func() { stopFirewall(); <-fwDone }()

	aln, err := admin.Listen(st.Admin)
	if err != nil {
		return err
	}
	if aln != nil {
		go func() {
			if err := d.adm.Serve(aln); !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin listener failed; the proxy goes on", "err", err)
			}
		}()
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			d.adm.Shutdown(ctx)
		}()
		log.Info("admin listening", "admin", aln.Addr().String(), "token", st.Admin.Token != "", "pprof", st.Admin.Pprof)
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	errc := make(chan error, 1)
	ports := proxy.NewListeners(srv, log, errc)
	plan, err := ports.Prepare(st.Proxy.Listen, st.Proxy.ImplicitListen)
	if err != nil {
		srv.Close()
		return err
	}
	ports.Commit(plan)
	d.setListeners(ports) // reloads follow the config with them from now on
	log.Info("serving", "backend", st.Proxy.Backend, "version", versionString(), "tls", st.File.TLS.Mode)

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
			drain := d.settings().Proxy.DrainTimeout
			log.Info("draining", "signal", sig.String(), "sessions", srv.ActiveSessions(), "drain_timeout", drain)
			ctx, cancel := context.WithTimeout(context.Background(), drain)
			err := srv.Shutdown(ctx)
			cancel()
			if err != nil {
				log.Warn("drain timeout; closed remaining sessions", "err", err)
				// The aborted sessions still settle their guesses in flight
				// (failures, maybe bans to save): the limiter and the store
				// are closed (deferred) only once they have, within a bound.
				ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
				err = srv.Shutdown(ctx)
				cancel()
				if err != nil {
					log.Error("sessions still settling after the drain; stopping anyway", "settle_timeout", settleTimeout,
						"sessions", srv.ActiveSessions())
				}
			}
			log.Info("stopped")
			return nil
		}
	}
}

func newLogger(w io.Writer, format string, level slog.Leveler) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
