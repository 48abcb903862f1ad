"""Lab-host tooling: preflight (`snplab host check`), certificate provisioning and AMD KDS access."""
