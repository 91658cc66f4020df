package node

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/trireme-go/trireme/tokens"
)

// The node's secrets are files: a pre-shared key, or a CA certificate with
// either the node's certificate and key or the CA's key (the node then
// issues itself a certificate at start). They are watched and reloaded
// when they change, without a restart: a Kubernetes Secret mounted as a
// volume is updated in place by the kubelet (an atomic swap of its
// ..data link), and so is any file replaced by rename.

// nodeCertValidity is the validity of a certificate the node issues itself
// from the CA key (it issues a new one at every start and CA change).
const nodeCertValidity = 365 * 24 * time.Hour

// loadSecrets reads the configured secrets.
func loadSecrets(cfg *Config) (tokens.Secrets, error) {
	s := cfg.Secrets
	switch {
	case s.PSKFile != "":
		return tokens.LoadPSK(s.PSKFile)
	case s.CAKey != "":
		ca, err := tokens.ReadCertificate(s.CACert)
		if err != nil {
			return nil, err
		}
		caKey, err := tokens.ReadKey(s.CAKey)
		if err != nil {
			return nil, err
		}
		cert, key, err := tokens.IssueNode(ca, caKey, cfg.Node, time.Now().Add(-time.Minute), nodeCertValidity)
		if err != nil {
			return nil, fmt.Errorf("issuing the node certificate: %w", err)
		}
		return tokens.NewPKI(ca, cert, key)
	default:
		return tokens.LoadPKI(s.CACert, s.NodeCert, s.NodeKey)
	}
}

// secretFiles are the files the secrets are read from.
func (s Secrets) files() []string {
	var out []string
	for _, f := range []string{s.PSKFile, s.CACert, s.NodeCert, s.NodeKey, s.CAKey} {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

// secretsSum identifies the secrets files' content.
func secretsSum(files []string) ([32]byte, error) {
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return [32]byte{}, err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", f, len(b))
		h.Write(b)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, nil
}

// secretsLoop reloads the secrets when their files change. A change that
// cannot be loaded (a half-written file, a key too short, a certificate
// for another node) is logged and the secrets in force stay.
func (d *Daemon) secretsLoop(ctx context.Context) {
	defer d.wg.Done()
	files := d.cfg.Secrets.files()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		d.log.Error("watching the secrets files: they will not be reloaded", "err", err)
		return
	}
	defer w.Close()
	dirs := map[string]bool{}
	for _, f := range files {
		dirs[filepath.Dir(f)] = true
	}
	for dir := range dirs {
		if err := w.Add(dir); err != nil {
			d.log.Error("watching the secrets files: they will not be reloaded", "dir", dir, "err", err)
		}
	}
	sum, _ := secretsSum(files)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-w.Events:
			if !ok {
				return
			}
			timer.Reset(200 * time.Millisecond)
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			d.log.Warn("watching the secrets files", "err", err)
		case <-timer.C:
			now, err := secretsSum(files)
			if err != nil || now == sum {
				continue
			}
			if err := d.reloadSecrets(); err != nil {
				d.secretsErrors.Add(1)
				d.log.Error("secrets changed but could not be loaded: the previous secrets stay in force", "err", err)
				continue
			}
			sum = now
		}
	}
}

// reloadSecrets loads the secrets and puts them in force.
func (d *Daemon) reloadSecrets() error {
	sec, err := loadSecrets(d.cfg)
	if err != nil {
		return err
	}
	if err := d.tok.SetSecrets(sec); err != nil {
		return err
	}
	d.secretsReloads.Add(1)
	d.log.Info("secrets reloaded", "kind", sec.Kind())
	return nil
}
