// Command cert-manager-controller runs cert-manager's own control loops, from
// its public pkg/controller packages, against a Kubernetes API server. It is
// the outside judge for cert-csi: the differential and interop tests run it
// where a real cert-manager would run.
//
// This is not cert-manager's controller binary (that one lives in a separate
// Go module the proxy does not serve). It is a short main written for
// cert-csi that wires up only what the tests need:
//   - the CertificateRequest approver,
//   - the CA and SelfSigned CertificateRequest signers,
//   - the Issuer and ClusterIssuer readiness loops,
//   - the Certificate loops (trigger, key manager, request manager, issuing,
//     readiness, revision manager).
//
// Left out: ACME, Vault, Venafi, the ingress and Gateway shims, the
// CertificateSigningRequest signers, cainjector, leader election, the
// webhook, and the metrics and health servers.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// Each of these registers its control loop with controllerpkg in init().
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	// The issuer types the Issuer loops know how to set up.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "path to a kubeconfig; empty means in-cluster")
	master := flag.String("master", "", "the API server's address, overriding the kubeconfig")
	clusterNS := flag.String("cluster-resource-namespace", "cert-manager",
		"the namespace that holds the Secrets of ClusterIssuers (cert-manager's flag of the same name)")
	only := flag.String("controllers", "",
		"comma-separated control loops to run (default: all that this binary has; see --list)")
	list := flag.Bool("list", false, "print the control loops this binary has and exit")
	workers := flag.Int("workers", 5, "workers per control loop")
	qps := flag.Float64("kube-api-qps", 20, "client-side API rate limit when the server has no priority and fairness")
	burst := flag.Int("kube-api-burst", 50, "client-side API burst")
	klog.InitFlags(nil)
	flag.Parse()

	known := controllerpkg.Known()
	names := make([]string, 0, len(known))
	for name := range known {
		names = append(names, name)
	}
	sort.Strings(names)
	if *list {
		fmt.Println(strings.Join(names, "\n"))
		return
	}
	if *only != "" {
		names = nil
		for _, name := range strings.Split(*only, ",") {
			name = strings.TrimSpace(name)
			if _, ok := known[name]; !ok {
				fmt.Fprintf(os.Stderr, "unknown control loop %q; --list shows the ones this binary has\n", name)
				os.Exit(2)
			}
			names = append(names, name)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, klog.Background(), "cert-manager-controller")

	if err := run(ctx, names, *kubeconfig, *master, *clusterNS, *workers, float32(*qps), *burst); err != nil {
		fmt.Fprintln(os.Stderr, "cert-manager-controller:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, names []string, kubeconfig, master, clusterNS string, workers int, qps float32, burst int) error {
	opts := controllerpkg.ContextOptions{
		APIServerHost:      master,
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   qps,
		KubernetesAPIBurst: burst,
		IssuerOptions: controllerpkg.IssuerOptions{
			ClusterResourceNamespace: clusterNS,
		},
		// cert-manager's own defaults for these flags.
		CertificateOptions: controllerpkg.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	}
	factory, err := controllerpkg.NewContextFactory(ctx, opts)
	if err != nil {
		return err
	}

	// Construct every loop first: constructing registers the informers each
	// one needs, and the shared factories must know them all before they start.
	loops := make(map[string]controllerpkg.Interface, len(names))
	for _, name := range names {
		loop, err := controllerpkg.Known()[name](factory)
		if err != nil {
			return fmt.Errorf("constructing %s: %w", name, err)
		}
		loops[name] = loop
	}

	shared, err := factory.Build()
	if err != nil {
		return err
	}
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())

	var wg sync.WaitGroup
	errs := make(chan error, len(loops))
	for name, loop := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			klog.InfoS("starting control loop", "controller", name)
			if err := loop.Run(workers, ctx); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	klog.InfoS("running", "controllers", strings.Join(names, ","))
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	return nil
}
