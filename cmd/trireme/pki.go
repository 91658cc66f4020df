package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/spf13/cobra"

	"github.com/trireme-go/trireme/tokens"
)

// Files written by `trireme pki`.
const (
	caCertFile   = "ca.crt"
	caKeyFile    = "ca.key"
	nodeCertFile = "node.crt"
	nodeKeyFile  = "node.key"
)

func init() { rootCmd.AddCommand(newPKICmd()) }

// newPKICmd builds `trireme pki`: a deployment CA and node certificates for
// PKI mode (tokens.LoadPKI reads what it writes).
func newPKICmd() *cobra.Command {
	pki := &cobra.Command{
		Use:   "pki",
		Short: "Create a deployment CA and node certificates for PKI mode",
	}

	var initOut, caName string
	var initForce bool
	var caValidity time.Duration
	initCmd := &cobra.Command{
		Use:   "init --out DIR",
		Short: "Create a CA: DIR/ca.key (0600) and DIR/ca.crt",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if initOut == "" {
				return errors.New("--out is required")
			}
			cert, key, err := tokens.NewCA(caName, time.Now(), caValidity)
			if err != nil {
				return err
			}
			keyPEM, err := tokens.KeyPEM(key)
			if err != nil {
				return err
			}
			files := []outFile{
				{caKeyFile, keyPEM, 0o600},
				{caCertFile, tokens.CertificatePEM(cert), 0o644},
			}
			if err := writeFiles(initOut, files, initForce); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CA %q valid until %s: %s, %s\n", caName,
				cert.NotAfter.UTC().Format(time.RFC3339), filepath.Join(initOut, caCertFile), filepath.Join(initOut, caKeyFile))
			return nil
		},
	}
	initCmd.Flags().StringVar(&initOut, "out", "", "directory for ca.crt and ca.key (created if missing)")
	initCmd.Flags().StringVar(&caName, "name", "trireme CA", "the CA's common name")
	initCmd.Flags().DurationVar(&caValidity, "validity", 10*365*24*time.Hour, "how long the CA is valid")
	initCmd.Flags().BoolVar(&initForce, "force", false, "overwrite existing files")

	var caDir, node, issueOut string
	var issueForce bool
	var nodeValidity time.Duration
	issueCmd := &cobra.Command{
		Use:   "issue --ca DIR --node NAME --out DIR",
		Short: "Issue a node key and certificate: DIR/node.key (0600), DIR/node.crt, and a copy of ca.crt",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if caDir == "" || issueOut == "" {
				return errors.New("--ca and --out are required")
			}
			if !nodeName.MatchString(node) {
				return fmt.Errorf("--node %q: want 1 to 64 letters, digits, '.', '_' or '-'", node)
			}
			ca, err := tokens.ReadCertificate(filepath.Join(caDir, caCertFile))
			if err != nil {
				return err
			}
			caKey, err := tokens.ReadKey(filepath.Join(caDir, caKeyFile))
			if err != nil {
				return err
			}
			if !caKey.PublicKey.Equal(ca.PublicKey) {
				return fmt.Errorf("%s does not match %s", filepath.Join(caDir, caKeyFile), filepath.Join(caDir, caCertFile))
			}
			cert, key, err := tokens.IssueNode(ca, caKey, node, time.Now(), nodeValidity)
			if err != nil {
				return err
			}
			// Check what we issue the way peers and LoadPKI will.
			if _, err := tokens.NewPKI(ca, cert, key); err != nil {
				return err
			}
			keyPEM, err := tokens.KeyPEM(key)
			if err != nil {
				return err
			}
			files := []outFile{
				{nodeKeyFile, keyPEM, 0o600},
				{nodeCertFile, tokens.CertificatePEM(cert), 0o644},
				{caCertFile, tokens.CertificatePEM(ca), 0o644},
			}
			if err := writeFiles(issueOut, files, issueForce); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %q valid until %s: %s, %s\n", node,
				cert.NotAfter.UTC().Format(time.RFC3339), filepath.Join(issueOut, nodeCertFile), filepath.Join(issueOut, nodeKeyFile))
			return nil
		},
	}
	issueCmd.Flags().StringVar(&caDir, "ca", "", "directory holding ca.crt and ca.key (from pki init)")
	issueCmd.Flags().StringVar(&node, "node", "", "the node's name (certificate CN, the iss of its tokens)")
	issueCmd.Flags().StringVar(&issueOut, "out", "", "directory for node.crt, node.key and ca.crt (created if missing)")
	issueCmd.Flags().DurationVar(&nodeValidity, "validity", 365*24*time.Hour, "how long the certificate is valid (at most the CA's)")
	issueCmd.Flags().BoolVar(&issueForce, "force", false, "overwrite existing files")

	pki.AddCommand(initCmd, issueCmd)
	return pki
}

var nodeName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

type outFile struct {
	name string
	data []byte
	mode fs.FileMode
}

// writeFiles writes files into dir. Unless force, it refuses (and writes
// nothing) if any of them exists. Each file is written to a temporary file
// with its final mode and renamed into place, so a key is never readable by
// others, not even briefly.
func writeFiles(dir string, files []outFile, force bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if !force {
		for _, f := range files {
			p := filepath.Join(dir, f.name)
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("%s exists (use --force to overwrite)", p)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	for _, f := range files {
		tmp, err := os.CreateTemp(dir, "."+f.name+".*")
		if err != nil {
			return err
		}
		name := tmp.Name()
		err = tmp.Chmod(f.mode)
		if err == nil {
			_, err = tmp.Write(f.data)
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(name, filepath.Join(dir, f.name))
		}
		if err != nil {
			os.Remove(name)
			return err
		}
	}
	return nil
}
