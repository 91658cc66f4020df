package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/trireme-go/trireme/buildinfo"
	"github.com/trireme-go/trireme/node"
)

func init() {
	var configPath, logLevel, netnsName string
	daemon := &cobra.Command{
		Use:   "daemon --config FILE [--netns NAME]",
		Short: "Run the node daemon: discover PUs and enforce their policy",
		Long: `Run the node daemon. It creates the node bridge, steers each PU's handshakes
into the enforcement core, and serves the control API on a unix socket.

On SIGTERM or SIGINT it stops gracefully and leaves the steering in place:
until a daemon runs again, policed PUs cannot open new connections (fail
closed) while their established ones continue. A restarted daemon picks its
PUs and their authorized flows up again. 'trireme daemon purge' removes
everything the daemon put in the kernel.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if netnsName != "" {
				if err := runInNetns(netnsName); err != nil {
					return err
				}
			}
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			bi := buildinfo.Get()
			log.Info("trireme daemon", "version", bi.Version, "commit", bi.Commit, "modified", bi.Modified, "go", bi.Go)
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			goDefault := runtime.GOMAXPROCS(0)
			procs := cfg.Procs(goDefault, os.Getenv("GOMAXPROCS"))
			runtime.GOMAXPROCS(procs)
			log.Info("processors", "maxProcs", runtime.GOMAXPROCS(0), "goDefault", goDefault, "cpus", runtime.NumCPU())
			d, err := node.New(cfg, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if err := d.Start(ctx); err != nil {
				d.Stop()
				return err
			}
			// Under systemd (Type=notify): enforcing now.
			if sent, err := node.SDNotify("READY=1\nSTATUS=enforcing"); err != nil {
				log.Warn("could not tell systemd the daemon is ready", "err", err)
			} else if sent {
				log.Debug("told systemd: READY=1")
			}
			<-ctx.Done()
			log.Info("signal received, stopping")
			if _, err := node.SDNotify("STOPPING=1"); err != nil {
				log.Warn("could not tell systemd the daemon stops", "err", err)
			}
			d.Stop()
			return nil
		},
	}
	daemon.Flags().StringVar(&configPath, "config", "/etc/trireme/config.yaml", "daemon configuration file")
	daemon.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	daemon.PersistentFlags().StringVar(&netnsName, "netns", "", "run inside this network namespace (a name under /run/netns, or a path such as /proc/PID/ns/net) instead of the caller's; no 'ip netns exec' needed")

	purge := &cobra.Command{
		Use:   "purge --config FILE [--netns NAME]",
		Short: "Remove everything a stopped daemon left in the kernel (steering table, TAPs, bridge, created PUs)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if netnsName != "" {
				if err := runInNetns(netnsName); err != nil {
					return err
				}
			}
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			return node.Purge(cfg)
		},
	}
	purge.Flags().StringVar(&configPath, "config", "/etc/trireme/config.yaml", "daemon configuration file")
	daemon.AddCommand(purge)
	rootCmd.AddCommand(daemon)
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
