// AuroraBootstrap: Custom::AuroraBootstrap in the stack that makes the cluster, so that
// one `cdk deploy` makes the cluster and its users, and fails when they cannot be
// made. It makes what deploy/cloudformation.yaml makes for the in-stack resource: the
// task definition (the job's image, the users and groups in its environment), its
// roles, its security group and the rule that admits it to the cluster, the launcher
// (deploy/launcher.py, outside the VPC) with the EventBridge rule that hears its tasks
// stop, and the resource itself, after the cluster's instances.
import * as fs from "node:fs";
import * as path from "node:path";

import * as cdk from "aws-cdk-lib";
import * as ec2 from "aws-cdk-lib/aws-ec2";
import * as ecs from "aws-cdk-lib/aws-ecs";
import * as events from "aws-cdk-lib/aws-events";
import * as targets from "aws-cdk-lib/aws-events-targets";
import * as iam from "aws-cdk-lib/aws-iam";
import * as lambda from "aws-cdk-lib/aws-lambda";
import * as logs from "aws-cdk-lib/aws-logs";
import * as rds from "aws-cdk-lib/aws-rds";
import * as secretsmanager from "aws-cdk-lib/aws-secretsmanager";
import { Construct } from "constructs";

const STARTED_BY = "aurora-bootstrap-cfn";
const CONTAINER = "bootstrap";

export interface AuroraBootstrapProps {
  /** The cluster whose users are made (in this stack, or imported). */
  readonly cluster: rds.IDatabaseCluster;
  /** Its VPC: the task runs in its private subnets. */
  readonly vpc: ec2.IVpc;
  /** The job's image, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/aurora-bootstrap:1.4.0 */
  readonly image: string;
  /** IAM_USERS: name[:role...] comma-separated, or the JSON list. */
  readonly iamUsers: string;
  /** GROUP_ROLES: the groups and their privileges; unset, the shipped default. */
  readonly groupRoles?: Record<string, unknown>;
  /** PRUNE. */
  readonly prune?: boolean;
  /** The master secret; by default the cluster's own (DatabaseCluster.secret). */
  readonly secret?: secretsmanager.ISecret;
  /** Where the tasks run; by default an ECS cluster of its own in `vpc`. */
  readonly ecsCluster?: ecs.ICluster;
  /** The subnets of the task: they must reach the cluster, the AWS APIs and S3. */
  readonly subnets?: ec2.SubnetSelection;
  /** How long CloudFormation waits for the answer (the resource's ServiceTimeout). */
  readonly serviceTimeout?: cdk.Duration;
}

export class AuroraBootstrap extends Construct {
  public readonly resource: cdk.CustomResource;
  public readonly taskDefinition: ecs.FargateTaskDefinition;
  public readonly securityGroup: ec2.SecurityGroup;
  public readonly launcher: lambda.Function;

  constructor(scope: Construct, id: string, props: AuroraBootstrapProps) {
    super(scope, id);
    const stack = cdk.Stack.of(this);
    const secret = props.secret ?? (props.cluster as rds.DatabaseCluster).secret;
    if (secret === undefined) {
      throw new Error("AuroraBootstrap: the cluster has no secret; give `secret`");
    }
    const serviceTimeout = props.serviceTimeout ?? cdk.Duration.minutes(15);
    // The run ends before CloudFormation stops waiting, less a task's start.
    const deadline = Math.min(300, serviceTimeout.toSeconds() - 120);
    const requests = `/aurora-bootstrap/${stack.stackName}/${id}/requests`;
    const requestsArn = stack.formatArn({
      service: "ssm",
      resource: "parameter",
      resourceName: `${requests.slice(1)}/*`,
    });
    const ecsCluster = props.ecsCluster ?? new ecs.Cluster(this, "Tasks", { vpc: props.vpc });
    const subnets = props.vpc.selectSubnets(
      props.subnets ?? { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
    );

    // The audit trail of who was granted what outlives the stack; the launcher's own
    // log (how it answered) goes with it.
    const taskLogs = new logs.LogGroup(this, "TaskLogs", {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: cdk.RemovalPolicy.RETAIN,
    });
    this.taskDefinition = new ecs.FargateTaskDefinition(this, "Task", {
      cpu: 256,
      memoryLimitMiB: 512,
    });
    this.taskDefinition.addContainer(CONTAINER, {
      containerName: CONTAINER,
      image: ecs.ContainerImage.fromRegistry(props.image),
      command: ["apply"],
      readonlyRootFilesystem: true,
      logging: ecs.LogDrivers.awsLogs({ logGroup: taskLogs, streamPrefix: "ecs" }),
      environment: {
        DB_CLUSTER_ID: props.cluster.clusterIdentifier,
        DB_SECRET_ARN: secret.secretArn,
        IAM_USERS: props.iamUsers,
        GROUP_ROLES: props.groupRoles ? JSON.stringify(props.groupRoles) : "",
        PRUNE: props.prune ? "true" : "false",
        DEADLINE_SECONDS: String(deadline),
        LOG_FORMAT: "json",
      },
    });
    const taskRole = this.taskDefinition.taskRole;
    secret.grantRead(taskRole);
    taskRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ["rds:DescribeDBClusters"],
        resources: [
          stack.formatArn({
            service: "rds",
            resource: "cluster",
            resourceName: props.cluster.clusterIdentifier,
            arnFormat: cdk.ArnFormat.COLON_RESOURCE_NAME,
          }),
        ],
      }),
    );
    taskRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ["ssm:GetParameter", "ssm:DeleteParameter"],
        resources: [requestsArn],
      }),
    );

    this.securityGroup = new ec2.SecurityGroup(this, "TaskSecurityGroup", {
      vpc: props.vpc,
      description: "aurora-bootstrap task: to the database, the AWS APIs and S3",
    });
    props.cluster.connections.allowDefaultPortFrom(this.securityGroup, "aurora-bootstrap's task");

    const launcherLogs = new logs.LogGroup(this, "LauncherLogs", {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: cdk.RemovalPolicy.DESTROY,
    });
    this.launcher = new lambda.Function(this, "Launcher", {
      description: `Custom::AuroraBootstrap launcher of ${stack.stackName}`,
      runtime: lambda.Runtime.PYTHON_3_13,
      handler: "index.handler",
      code: lambda.Code.fromInline(
        fs.readFileSync(path.join(__dirname, "..", "launcher.py"), "utf8"),
      ),
      timeout: cdk.Duration.seconds(60),
      memorySize: 128,
      logGroup: launcherLogs,
      environment: {
        CLUSTER: ecsCluster.clusterName,
        TASK_DEFINITION: this.taskDefinition.taskDefinitionArn,
        CONTAINER,
        SUBNETS: subnets.subnetIds.join(","),
        SECURITY_GROUP: this.securityGroup.securityGroupId,
        REQUESTS: requests,
        DEADLINE_SECONDS: String(deadline),
      },
    });
    const launcherRole = this.launcher.role!;
    const clusterArn = ecsCluster.clusterArn;
    launcherRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ["ecs:RunTask"],
        resources: [
          stack.formatArn({
            service: "ecs",
            resource: "task-definition",
            resourceName: `${this.taskDefinition.family}:*`,
          }),
        ],
        conditions: { ArnEquals: { "ecs:cluster": clusterArn } },
      }),
    );
    launcherRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ["iam:PassRole"],
        resources: [taskRole.roleArn, this.taskDefinition.obtainExecutionRole().roleArn],
        conditions: { StringEquals: { "iam:PassedToService": "ecs-tasks.amazonaws.com" } },
      }),
    );
    launcherRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ["ssm:PutParameter", "ssm:GetParameter", "ssm:DeleteParameter"],
        resources: [requestsArn],
      }),
    );
    launcherRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ["ecs:ListTasks", "ecs:DescribeTasks", "ecs:StopTask"],
        resources: ["*"],
        conditions: { ArnEquals: { "ecs:cluster": clusterArn } },
      }),
    );
    launcherRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ["cloudformation:DescribeStacks"],
        resources: [
          stack.formatArn({
            service: "cloudformation",
            resource: "stack",
            resourceName: `${stack.stackName}/*`,
          }),
        ],
      }),
    );

    // A task that stops without answering (no image, no secret, killed): ECS says so
    // here, and the launcher answers FAILED for it.
    const stopped = new events.Rule(this, "TaskStopped", {
      description: `Custom::AuroraBootstrap tasks of ${stack.stackName} that stopped`,
      eventPattern: {
        source: ["aws.ecs"],
        detailType: ["ECS Task State Change"],
        detail: {
          lastStatus: ["STOPPED"],
          startedBy: [STARTED_BY],
          clusterArn: [clusterArn],
        },
      },
    });
    stopped.addTarget(new targets.LambdaFunction(this.launcher));

    this.resource = new cdk.CustomResource(this, "Resource", {
      resourceType: "Custom::AuroraBootstrap",
      serviceToken: this.launcher.functionArn,
      serviceTimeout,
      properties: {
        ClusterId: props.cluster.clusterIdentifier,
        SecretArn: secret.secretArn,
        // What re-runs the bootstrap on an Update; a rollback runs this revision again.
        Triggers: {
          Image: props.image,
          IamUsers: props.iamUsers,
          GroupRoles: props.groupRoles ? JSON.stringify(props.groupRoles) : "",
          TaskDefinition: this.taskDefinition.taskDefinitionArn,
        },
      },
    });
    // After the writer instance (not just the cluster: CloudFormation calls a cluster
    // made before any instance can take a connection), the ingress rule and the rule
    // that hears a task that never ran.
    const instances = props.cluster.node
      .findAll()
      .filter((child) => child instanceof rds.CfnDBInstance);
    this.resource.node.addDependency(...(instances.length > 0 ? instances : [props.cluster]));
    this.resource.node.addDependency(this.securityGroup);
    this.resource.node.addDependency(stopped);
  }
}
