package main

// `trireme ui`: the daemon's web page for a browser on this machine. The
// page is served on the control socket (root's); this serves it on a local
// TCP address, read-only, to a browser that has the token it prints.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/trireme-go/trireme/node"
)

func init() {
	var socket, listen string
	cmd := &cobra.Command{
		Use:   "ui",
		Short: "Serve the daemon's web page (a live service map) to a local browser",
		Long: `Serves the web page of the daemon (docs/observability.md) on a local TCP
address, read-only, to a browser that opens the address it prints (it carries
a fresh token). Stops on Ctrl-C. On a remote node, forward the port with ssh -L.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := node.NewClient(socket).Stats(); err != nil {
				return err
			}
			b := make([]byte, 16)
			if _, err := rand.Read(b); err != nil {
				return err
			}
			token := hex.EncodeToString(b)
			h, err := node.WebProxy(socket, token)
			if err != nil {
				return err
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, MaxHeaderBytes: 16 << 10}
			fmt.Fprintf(cmd.OutOrStdout(), "http://%s/?token=%s\n", l.Addr(), token)
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() { <-ctx.Done(); srv.Close() }()
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&socket, "socket", node.DefaultSocket, "daemon control socket")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "local address to serve the page on")
	rootCmd.AddCommand(cmd)
}
