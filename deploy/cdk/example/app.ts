// One stack, one `cdk deploy`: the cluster, and its IAM users made by aurora-bootstrap.
import * as cdk from "aws-cdk-lib";
import * as ec2 from "aws-cdk-lib/aws-ec2";
import * as rds from "aws-cdk-lib/aws-rds";
import { Construct } from "constructs";

import { AuroraBootstrap } from "../aurora-bootstrap";

export class DatabaseStack extends cdk.Stack {
  constructor(scope: Construct, id: string, props?: cdk.StackProps) {
    super(scope, id, props);
    const vpc = new ec2.Vpc(this, "Vpc", { maxAzs: 2, natGateways: 1 });
    const cluster = new rds.DatabaseCluster(this, "Cluster", {
      engine: rds.DatabaseClusterEngine.auroraPostgres({
        version: rds.AuroraPostgresEngineVersion.VER_17_9,
      }),
      vpc,
      writer: rds.ClusterInstance.serverlessV2("writer"),
      serverlessV2MinCapacity: 0.5,
      serverlessV2MaxCapacity: 2,
      iamAuthentication: true,
      credentials: rds.Credentials.fromGeneratedSecret("master"),
    });
    new AuroraBootstrap(this, "Users", {
      cluster,
      vpc,
      image: "123456789012.dkr.ecr.eu-west-1.amazonaws.com/aurora-bootstrap:1.4.0",
      iamUsers: "app_user:app_readwrite,report_user:app_readonly",
      groupRoles: {
        app_readwrite: [{ schemas: ["public"], access: "write" }],
        app_readonly: [{ schemas: ["public"], access: "read" }],
      },
    });
  }
}

const app = new cdk.App(); // writes to CDK_OUTDIR
new DatabaseStack(app, "Database", {
  // No bootstrap stack needed to synthesize (or to deploy a template without assets).
  synthesizer: new cdk.DefaultStackSynthesizer({ generateBootstrapVersionRule: false }),
});
app.synth();
