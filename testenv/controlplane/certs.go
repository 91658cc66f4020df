package controlplane

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki is what one control plane's kube-apiserver and its clients need: a CA
// that signs the serving certificate and the admin client certificate (the
// apiserver's --client-ca-file), and the key that signs service-account
// tokens. All of it is made fresh per control plane and lives in its
// directory, so nothing outlives the test.
type pki struct {
	caCert, caFile                   string // PEM, path
	servingCertFile, servingKeyFile  string
	adminCert, adminKey              []byte // PEM
	adminCertFile, adminKeyFile      string
	serviceAccountKey, serviceAccPub string // paths
}

// adminUser is the admin credential's user; system:masters bypasses RBAC.
const adminUser = "trireme-test-admin"

func newPKI(dir string, serviceIP net.IP) (*pki, error) {
	p := &pki{
		caFile:            filepath.Join(dir, "ca.crt"),
		servingCertFile:   filepath.Join(dir, "apiserver.crt"),
		servingKeyFile:    filepath.Join(dir, "apiserver.key"),
		adminCertFile:     filepath.Join(dir, "admin.crt"),
		adminKeyFile:      filepath.Join(dir, "admin.key"),
		serviceAccountKey: filepath.Join(dir, "sa.key"),
		serviceAccPub:     filepath.Join(dir, "sa.pub"),
	}
	now := time.Now().Add(-time.Hour) // tolerate clock skew between cert and process start
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "trireme-test-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, caX509, err := sign(caTmpl, nil, caKey, caKey)
	if err != nil {
		return nil, err
	}
	p.caCert = string(pemBlock("CERTIFICATE", caDER))

	servingKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	servingDER, _, err := sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:   now,
		NotAfter:    now.Add(48 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), serviceIP},
	}, caX509, caKey, servingKey)
	if err != nil {
		return nil, err
	}

	adminKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	adminDER, _, err := sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: adminUser, Organization: []string{"system:masters"}},
		NotBefore:   now,
		NotAfter:    now.Add(48 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, caX509, caKey, adminKey)
	if err != nil {
		return nil, err
	}
	p.adminCert = pemBlock("CERTIFICATE", adminDER)
	if p.adminKey, err = keyPEM(adminKey); err != nil {
		return nil, err
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	saKeyPEM, err := keyPEM(saKey)
	if err != nil {
		return nil, err
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	servingKeyPEM, err := keyPEM(servingKey)
	if err != nil {
		return nil, err
	}
	for path, data := range map[string][]byte{
		p.caFile:            []byte(p.caCert),
		p.servingCertFile:   pemBlock("CERTIFICATE", servingDER),
		p.servingKeyFile:    servingKeyPEM,
		p.adminCertFile:     p.adminCert,
		p.adminKeyFile:      p.adminKey,
		p.serviceAccountKey: saKeyPEM,
		p.serviceAccPub:     pemBlock("PUBLIC KEY", saPubDER),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// sign issues tmpl for pub's key, signed by parent (self-signed when nil).
func sign(tmpl, parent *x509.Certificate, parentKey crypto.Signer, key *ecdsa.PrivateKey) ([]byte, *x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate %s: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	return der, cert, err
}

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pemBlock("EC PRIVATE KEY", der), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
